# Session 7, call 3 (4 GPUs): call 1's arm B continued, two arms of 2 GPUs each (global batch 512, uniform sampling):
#   C (GPUs 0,1): same architecture (3 blocks per decoder attention layer), 2400 more steps, lr 1.5e-4 -> 7.5e-6
#   D (GPUs 2,3): grown again to 5 blocks per decoder attention layer, 2000 steps, same schedule
# then the adherence breakdown on 1000 held-out prompts for both (same prompts and seeds as before).
set -u
date
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .device/base7/whl/*.whl || exit 1
. .device/s5/env.sh
unxz() { python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$1" "$2"; }
if [ ! -f /tmp/minilm/minilm_compact.safetensors ]; then
  rm -rf /tmp/minilm; mkdir -p /tmp/minilm; cp .device/base7/minilm/*.json .device/base7/minilm/vocab.txt /tmp/minilm/
  unxz .device/base7/minilm/minilm_compact.safetensors.xz /tmp/minilm/minilm_compact.safetensors
fi
rm -rf /tmp/w; mkdir -p /tmp/w/ldm; cp -r condiff/weights/vae condiff/weights/evalenc /tmp/w/
for f in .device/initS7b/ldm/*; do case $f in *.xz) unxz $f /tmp/w/ldm/$(basename $f .xz);; *) cp $f /tmp/w/ldm/;; esac; done
[ -f /tmp/world/manifest.json ] || python3 -m condiff.cli data build --from-pack .device/base7/world-pack-v1.json.xz --out /tmp/world --workers 60 > /tmp/build.log 2>&1
tail -1 /tmp/build.log; date
COMMON="-m condiff.train.recipes.job --world /tmp/world --init /tmp/w --stages ldm --int8 ldm \
  --batch ldm=512 --lr ldm=1.5e-4 --min-lr-ratio ldm=0.05 --minutes ldm=5.3"
CUDA_VISIBLE_DEVICES=0,1 $TR --nproc-per-node 2 $COMMON --out /tmp/c8 --ldm-decoder-depth 3 --steps ldm=2400 > /tmp/c8.log 2>&1 &
sleep 2
CUDA_VISIBLE_DEVICES=2,3 $TR --nproc-per-node 2 $COMMON --out /tmp/d8 --ldm-decoder-depth 5 --steps ldm=2000 > /tmp/d8.log 2>&1 &
wait
date
grep -v Warning /tmp/c8.log | tail -n 2; grep -v Warning /tmp/d8.log | tail -n 2
g=0
for arm in c8 d8; do
  rm -rf /tmp/w_$arm; mkdir -p /tmp/w_$arm; cp -r /tmp/w/vae /tmp/w/evalenc /tmp/$arm/weights/ldm /tmp/w_$arm/
  CUDA_VISIBLE_DEVICES=$g CONDIFF_WEIGHTS=/tmp/w_$arm python3 tools/adherence_breakdown.py --world /tmp/world --n 1000 \
    --list --device cuda --batch 250 --out /tmp/br_$arm.json > /tmp/br_$arm.log 2>&1 &
  g=$((g+1))
done
wait
date
grep -h '"adherence top5' /tmp/br_*.json
mkdir -p /tmp/res9; cp /tmp/c8.log /tmp/d8.log /tmp/br_* /tmp/res9/
for arm in c8 d8; do cp /tmp/$arm/job_log.json /tmp/res9/${arm}_job_log.json; cp /tmp/$arm/runs/ldm/metrics.jsonl /tmp/res9/${arm}_metrics.jsonl; done
pack c3 c8/weights/ldm d8/weights/ldm res9
date
