# Session 9, call 3 (4 GPUs): a six-way weight average of the shipped `ldm` (B) and five of its continuations (session 7 C,
# session 8 E1, E2, G, session 9 D; `condiff models merge`, equal weights, int8), carried as .device/s9/soup; made on the
# CPU with: python -m condiff.cli models merge condiff/weights/ldm C/ldm E1/ldm E2/ldm G/ldm D/ldm --out .device/s9/soup
# Adherence at γ 5 and 7.5 on the reported 1000 held-out prompts and on the other 934 (--offset 1000).
set -u
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .device/base7/whl/*.whl || exit 1
. .device/s5/env.sh
unxz() { python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$1" "$2"; }
if [ ! -f /tmp/minilm/minilm_compact.safetensors ]; then
  rm -rf /tmp/minilm; mkdir -p /tmp/minilm; cp .device/base7/minilm/*.json .device/base7/minilm/vocab.txt /tmp/minilm/
  unxz .device/base7/minilm/minilm_compact.safetensors.xz /tmp/minilm/minilm_compact.safetensors
fi
rm -rf /tmp/w; mkdir -p /tmp/w/ldm; cp -r condiff/weights/vae condiff/weights/evalenc /tmp/w/; cp .device/s9/soup/* /tmp/w/ldm/
python3 -c "from condiff.models.weights import load_state; print(len(load_state('/tmp/w/ldm')), 'tensors, checksums verified')" || exit 2
nvidia-smi -L
[ -f /tmp/world/manifest.json ] || python3 -m condiff.cli data build --from-pack .device/base7/world-pack-v1.json.xz --out /tmp/world --workers 60 > /tmp/build.log 2>&1
tail -1 /tmp/build.log; el world
mkdir -p /tmp/res3; RES=/tmp/res3
br() {  # br GPU OFFSET N GUIDANCE
  CUDA_VISIBLE_DEVICES=$1 CONDIFF_WEIGHTS=/tmp/w timeout 170 python3 tools/adherence_breakdown.py --world /tmp/world \
    --offset $2 --n $3 --list --device cuda --batch 250 --guidance $4 --out $RES/br_s6_$2_g$4.json > $RES/br_s6_$2_g$4.log 2>&1
}
br 0 0 1000 5 & br 1 1000 934 5 & br 2 0 1000 7.5 & br 3 1000 934 7.5 & wait
el evaluated
for f in $RES/br_*.json; do echo "$(basename $f) $(grep '"adherence top5, generated"' $f)"; done
(cd /tmp && tar cf $OUT/c3.tar res3); ls -la $OUT
