export PYTHONPATH=/tmp/site:$PWD CONDIFF_MINILM_COMPACT=/tmp/minilm HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
J="python3 -m condiff.train.recipes.job --world /tmp/world"
# cn GPU OUT STAGE... : run ControlNet stages one after another on one GPU
pack() {  # pack NAME DIRS... : weights + logs into <=15 MiB parts under $OUT
  local name=$1; shift
  (cd /tmp && tar cf - "$@" | split -b 15M - "$OUT/$name.tar.")
  ls -la $OUT
}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
TR="python3 -m torch.distributed.run --standalone"
