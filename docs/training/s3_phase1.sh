set -u
date
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .device/base/whl/*.whl || exit 1
. .device/s3/env.sh
rm -rf /tmp/minilm; cp -r .device/base/minilm /tmp/minilm
nvidia-smi -L
[ -f /tmp/world/manifest.json ] || python3 -m condiff.cli data build --from-pack .device/base/world-pack-v1.json.xz --out /tmp/world --workers 48 > /tmp/build.log 2>&1
tail -2 /tmp/build.log; date
rm -rf /tmp/init; mkdir -p /tmp/init /tmp/init_old; cp -r .device/initS3/* /tmp/init/; cp -r .device/initS3/* /tmp/init_old/
CUDA_VISIBLE_DEVICES=0 $J --init /tmp/init --out /tmp/p1g0 --stages ldm --minutes ldm=7.0 --steps ldm=4800 --lr ldm=3e-4 --min-lr-ratio ldm=0.03 > /tmp/p1g0.log 2>&1 &
CUDA_VISIBLE_DEVICES=1 $J --init /tmp/init --out /tmp/p1g1 --stages inpaint --minutes inpaint=7.0 --steps inpaint=4600 --lr inpaint=2e-4 --min-lr-ratio inpaint=0.03 > /tmp/p1g1.log 2>&1 &
CUDA_VISIBLE_DEVICES=2 $J --init /tmp/init --out /tmp/p1g2 --stages controlnet-normal,controlnet-lineart --minutes controlnet-normal=3.1,controlnet-lineart=3.1 --steps controlnet-normal=1800,controlnet-lineart=1800 --lr controlnet-normal=3e-4,controlnet-lineart=3e-4 > /tmp/p1g2.log 2>&1 &
CUDA_VISIBLE_DEVICES=3 $J --init /tmp/init --out /tmp/p1g3 --stages controlnet-canny,controlnet-softedge,controlnet-depth --minutes controlnet-canny=1.9,controlnet-softedge=1.9,controlnet-depth=1.9 --steps controlnet-canny=1100,controlnet-softedge=1100,controlnet-depth=1100 --lr controlnet-canny=3e-4,controlnet-softedge=3e-4,controlnet-depth=3e-4 > /tmp/p1g3.log 2>&1 &
wait
date
grep -h "steps in\|Error\|error" /tmp/p1g?.log | tail -20
cp /tmp/p1g?.log /tmp/build.log /tmp/p1g0/ 2>/dev/null
pack p1 p1g0/weights p1g1/weights p1g2/weights p1g3/weights p1g0/job_log.json p1g1/job_log.json p1g2/job_log.json p1g3/job_log.json p1g0/ldm_samples.png p1g0/p1g0.log p1g0/p1g1.log p1g0/p1g2.log p1g0/p1g3.log p1g0/build.log
