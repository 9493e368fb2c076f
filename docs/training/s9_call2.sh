# Session 9, call 2 (4 GPUs): the shipped `ldm` (B) continued with one more context token, the masked mean of the
# MiniLM token embeddings (device-only prototype .device/s9/pooled_proto.py, kept as docs/training/s9_pooled_proto.py;
# switched on by CONDIFF_POOLED_TOKEN=1),
# in two arms of 2 GPUs each, 2400 steps at batch 512, lr 2e-4 -> 1e-5 (the schedule of session 8's control G):
#   P (GPUs 0,1): seed 0          Q (GPUs 2,3): --seed ldm=1
# then adherence on the reported 1000 held-out prompts and on the other 934 (--offset 1000) for both.
set -u
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .device/base7/whl/*.whl || exit 1
. .device/s5/env.sh
python3 .device/s9/pooled_proto.py || exit 3
export CONDIFF_POOLED_TOKEN=1
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
mkdir -p /tmp/res2; RES=/tmp/res2
COMMON="-m condiff.train.recipes.job --world /tmp/world --init /tmp/w --stages ldm --int8 ldm \
  --batch ldm=512 --lr ldm=2e-4 --min-lr-ratio ldm=0.05 --steps ldm=2400 --minutes ldm=5.2"
CUDA_VISIBLE_DEVICES=0,1 $TR --nproc-per-node 2 $COMMON --out /tmp/p > $RES/p_train.log 2>&1 &
sleep 2
CUDA_VISIBLE_DEVICES=2,3 $TR --nproc-per-node 2 $COMMON --out /tmp/q --seed ldm=1 > $RES/q_train.log 2>&1 &
wait
el trained
for a in p q; do grep -v Warning $RES/${a}_train.log | tail -n 2; cp /tmp/$a/job_log.json $RES/${a}_job_log.json
  cp /tmp/$a/runs/ldm/metrics.jsonl $RES/${a}_metrics.jsonl; cp /tmp/$a/ldm_samples.png $RES/${a}_samples.png; done
br() {  # br NAME GPU OFFSET N
  CUDA_VISIBLE_DEVICES=$2 CONDIFF_WEIGHTS=/tmp/w_$1 timeout 170 python3 tools/adherence_breakdown.py --world /tmp/world \
    --offset $3 --n $4 --list --device cuda --batch 250 --out $RES/br_$1_$3.json > $RES/br_$1_$3.log 2>&1
}
for a in p q; do mkdir -p /tmp/w_$a; cp -r /tmp/w/vae /tmp/w/evalenc /tmp/$a/weights/ldm /tmp/w_$a/; done
br p 0 0 1000 & br q 1 0 1000 & br p 2 1000 934 & br q 3 1000 934 & wait
el evaluated
for f in $RES/br_*.json; do echo "$f $(grep '"adherence top5, generated"' $f)"; done
mkdir -p /tmp/pk2; cp -r /tmp/p/weights/ldm /tmp/pk2/p; cp -r /tmp/q/weights/ldm /tmp/pk2/q; cp -r $RES /tmp/pk2/res
(cd /tmp && tar cf - pk2 | split -b 15M - "$OUT/c2.tar.")
ls -la $OUT; el packed
