# Session 4, call 1 (2 × H100): two evalenc variants from scratch with the full-vocabulary concept term,
# and the inpainting U-Net fine-tuned with subject masks. Environment: docs/training/s3_env.sh.
set -u
date
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .device/base/whl/*.whl || exit 1
. .device/s4/s3_env.sh
rm -rf /tmp/minilm; cp -r .device/base/minilm /tmp/minilm
nvidia-smi -L
[ -f /tmp/world/manifest.json ] || python3 -m condiff.cli data build --from-pack .device/base/world-pack-v1.json.xz --out /tmp/world --workers 30 > /tmp/build.log 2>&1
tail -1 /tmp/build.log; date
rm -rf /tmp/initA; cp -r .device/initS4a /tmp/initA
EV="--stages evalenc --lr evalenc=1e-3 --min-lr-ratio evalenc=0.02 --minutes evalenc=6.3"
CUDA_VISIBLE_DEVICES=0 $J --out /tmp/c1_small $EV --steps evalenc=2200 > /tmp/c1_small.log 2>&1 &
CUDA_VISIBLE_DEVICES=0 $J --init /tmp/initA --out /tmp/c1_inp --stages inpaint --minutes inpaint=6.3 --steps inpaint=2500 --lr inpaint=1e-4 --min-lr-ratio inpaint=0.03 > /tmp/c1_inp.log 2>&1 &
CUDA_VISIBLE_DEVICES=1 $J --out /tmp/c1_wide $EV --steps evalenc=1500 --evalenc-channels 48,96,192,384 > /tmp/c1_wide.log 2>&1 &
wait
date
grep -h "steps in\|Error\|error" /tmp/c1_*.log | tail -20
mkdir -p /tmp/c1logs; cp /tmp/c1_*.log /tmp/build.log /tmp/c1logs/
pack c1 c1_small/weights c1_wide/weights c1_inp/weights c1_small/job_log.json c1_wide/job_log.json c1_inp/job_log.json c1logs
