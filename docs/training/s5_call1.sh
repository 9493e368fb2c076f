# Session 5, call 1 (4 × H100): the text-to-image U-Net continued data-parallel over 4 GPUs
# (global batch 1024, lr 4e-4 -> 1.2e-5 cosine), warm-started from the shipped weights (carried as int8).
set -u
date
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .device/base/whl/*.whl || exit 1
. .device/s5/env.sh
rm -rf /tmp/minilm; cp -r .device/base/minilm /tmp/minilm
nvidia-smi -L
[ -f /tmp/world/manifest.json ] || python3 -m condiff.cli data build --from-pack .device/base/world-pack-v1.json.xz --out /tmp/world --workers 60 > /tmp/build.log 2>&1
tail -1 /tmp/build.log; date
rm -rf /tmp/init1; cp -r .device/initS5 /tmp/init1
$TR --nproc-per-node 4 -m condiff.train.recipes.job --world /tmp/world --init /tmp/init1 --out /tmp/d1 --stages ldm \
  --batch ldm=1024 --lr ldm=4e-4 --min-lr-ratio ldm=0.03 --steps ldm=4200 --minutes ldm=6.6 > /tmp/d1.log 2>&1
date
grep -v Warning /tmp/d1.log | tail -8
mkdir -p /tmp/d1res; cp /tmp/d1.log /tmp/build.log /tmp/d1/job_log.json /tmp/d1/ldm_samples.png /tmp/d1/runs/ldm/metrics.jsonl /tmp/d1res/
pack d1 d1/weights/ldm d1res
