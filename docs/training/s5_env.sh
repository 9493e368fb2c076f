# Session 5's environment on the GPU machine: session 3's (docs/training/s3_env.sh) with NVLink multicast
# off for NCCL, and a torchrun launcher. (The calls sourced an identical copy as .device/s5/env.sh.)
. "$(dirname "${BASH_SOURCE[0]}")/s3_env.sh"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
TR="python3 -m torch.distributed.run --standalone"
