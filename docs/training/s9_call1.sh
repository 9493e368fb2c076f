# Session 9, call 1 (4 GPUs): the shipped `ldm` (B) continued in two arms of 2 GPUs each, 2400 steps at batch 512,
# lr 2e-4 -> 1e-5 (session 8's control G had the same schedule with neither):
#   D (GPUs 0,1): --dropout ldm=0.1          H (GPUs 2,3): --ldm-augment flip
# then adherence on the reported 1000 held-out prompts and on the other 934 (--offset 1000) for both.
set -u
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .device/base7/whl/*.whl || exit 1
. .device/s5/env.sh
unxz() { python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$1" "$2"; }
if [ ! -f /tmp/minilm/minilm_compact.safetensors ]; then
  rm -rf /tmp/minilm; mkdir -p /tmp/minilm; cp .device/base7/minilm/*.json .device/base7/minilm/vocab.txt /tmp/minilm/
  unxz .device/base7/minilm/minilm_compact.safetensors.xz /tmp/minilm/minilm_compact.safetensors
fi
rm -rf /tmp/w; mkdir -p /tmp/w/ldm; cp -r condiff/weights/vae condiff/weights/evalenc /tmp/w/
for f in .device/initS7b/ldm/*; do case $f in *.xz) unxz $f /tmp/w/ldm/$(basename $f .xz);; *) cp $f /tmp/w/ldm/;; esac; done
python3 -c "from condiff.models.weights import load_state; print(len(load_state('/tmp/w/ldm')), 'tensors, checksums verified')" || exit 2
nvidia-smi -L
[ -f /tmp/world/manifest.json ] || python3 -m condiff.cli data build --from-pack .device/base7/world-pack-v1.json.xz --out /tmp/world --workers 60 > /tmp/build.log 2>&1
tail -1 /tmp/build.log; el world
mkdir -p /tmp/res1; RES=/tmp/res1
COMMON="-m condiff.train.recipes.job --world /tmp/world --init /tmp/w --stages ldm --int8 ldm \
  --batch ldm=512 --lr ldm=2e-4 --min-lr-ratio ldm=0.05 --steps ldm=2400 --minutes ldm=5.2"
CUDA_VISIBLE_DEVICES=0,1 $TR --nproc-per-node 2 $COMMON --out /tmp/d --dropout ldm=0.1 > $RES/d_train.log 2>&1 &
sleep 2
CUDA_VISIBLE_DEVICES=2,3 $TR --nproc-per-node 2 $COMMON --out /tmp/h --ldm-augment flip > $RES/h_train.log 2>&1 &
wait
el trained
for a in d h; do grep -v Warning $RES/${a}_train.log | tail -n 2; cp /tmp/$a/job_log.json $RES/${a}_job_log.json
  cp /tmp/$a/runs/ldm/metrics.jsonl $RES/${a}_metrics.jsonl; cp /tmp/$a/ldm_samples.png $RES/${a}_samples.png; done
br() {  # br NAME GPU OFFSET N
  [ -d /tmp/w_$1 ] || { mkdir -p /tmp/w_$1; cp -r /tmp/w/vae /tmp/w/evalenc /tmp/$1/weights/ldm /tmp/w_$1/; }
  CUDA_VISIBLE_DEVICES=$2 CONDIFF_WEIGHTS=/tmp/w_$1 timeout 170 python3 tools/adherence_breakdown.py --world /tmp/world \
    --offset $3 --n $4 --list --device cuda --batch 250 --out $RES/br_$1_$3.json > $RES/br_$1_$3.log 2>&1
}
br d 0 0 1000 & br h 1 0 1000 & br d 2 1000 934 & br h 3 1000 934 & wait
el evaluated
for f in $RES/br_*.json; do echo "$f $(grep '"adherence top5, generated"' $f)"; done
mkdir -p /tmp/pk1; cp -r /tmp/d/weights/ldm /tmp/pk1/d; cp -r /tmp/h/weights/ldm /tmp/pk1/h; cp -r $RES /tmp/pk1/res
(cd /tmp && tar cf - pk1 | split -b 15M - "$OUT/c1.tar.")
ls -la $OUT; el packed
