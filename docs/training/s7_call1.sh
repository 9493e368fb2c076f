# Session 7, call 1 (4 GPUs): the session-5 `ldm` (carried int8) grown to 3 transformer blocks per decoder attention
# layer (function-preserving), trained in two arms side by side, 2 GPUs each, global batch 512:
#   A (GPUs 0,1): pictures sampled family-balanced, weight n_family^-0.5      B (GPUs 2,3): uniform sampling
# then the adherence breakdown on 1000 held-out prompts for A, B and the carried baseline (same prompts, seeds).
set -u
date
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .device/base/whl/*.whl || exit 1
. .device/s5/env.sh
rm -rf /tmp/minilm; cp -r .device/base/minilm /tmp/minilm
nvidia-smi -L
[ -f /tmp/world/manifest.json ] || python3 -m condiff.cli data build --from-pack .device/base/world-pack-v1.json.xz --out /tmp/world --workers 60 > /tmp/build.log 2>&1
tail -1 /tmp/build.log; date
rm -rf /tmp/init7; cp -r .device/initS7 /tmp/init7; cp -r condiff/weights/vae condiff/weights/evalenc /tmp/init7/
COMMON="-m condiff.train.recipes.job --world /tmp/world --init /tmp/init7 --stages ldm --ldm-decoder-depth 3 --int8 ldm \
  --batch ldm=512 --lr ldm=2e-4 --min-lr-ratio ldm=0.05 --steps ldm=2400 --minutes ldm=5.6"
CUDA_VISIBLE_DEVICES=0,1 $TR --nproc-per-node 2 $COMMON --out /tmp/a7 --balance ldm=0.5 > /tmp/a7.log 2>&1 &
sleep 2
CUDA_VISIBLE_DEVICES=2,3 $TR --nproc-per-node 2 $COMMON --out /tmp/b7 > /tmp/b7.log 2>&1 &
wait
date
grep -v Warning /tmp/a7.log | tail -4; grep -v Warning /tmp/b7.log | tail -4
B="python3 tools/adherence_breakdown.py --world /tmp/world --n 1000 --list --device cuda --batch 250"
g=0
for arm in a7 b7 base; do
  rm -rf /tmp/w_$arm; mkdir -p /tmp/w_$arm; cp -r /tmp/init7/vae /tmp/init7/evalenc /tmp/w_$arm/
  if [ $arm = base ]; then cp -r /tmp/init7/ldm /tmp/w_$arm/; else cp -r /tmp/$arm/weights/ldm /tmp/w_$arm/; fi
  CUDA_VISIBLE_DEVICES=$g CONDIFF_WEIGHTS=/tmp/w_$arm $B --out /tmp/br_$arm.json > /tmp/br_$arm.log 2>&1 &
  g=$((g+1))
done
wait
date
tail -3 /tmp/br_*.log
mkdir -p /tmp/res7; cp /tmp/a7.log /tmp/b7.log /tmp/br_* /tmp/build.log /tmp/res7/
for arm in a7 b7; do cp /tmp/$arm/job_log.json /tmp/res7/${arm}_job_log.json; cp /tmp/$arm/ldm_samples.png /tmp/res7/${arm}_samples.png
  cp /tmp/$arm/runs/ldm/metrics.jsonl /tmp/res7/${arm}_metrics.jsonl; done
pack c1 a7/weights/ldm b7/weights/ldm res7
date
