# Session 8, call 3 (4 GPUs): the shipped `ldm` (B) under other sampler settings, on the 934 held-out prompts the
# reported 1000 do not include (--offset 1000): DPM++ 20/30/50 steps at γ 5, 7.5, 10; DDIM 50; Euler ancestral 30.
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
[ -f /tmp/world/manifest.json ] || python3 -m condiff.cli data build --from-pack .device/base7/world-pack-v1.json.xz --out /tmp/world --workers 60 > /tmp/build.log 2>&1
tail -1 /tmp/build.log; el world
mkdir -p /tmp/res3; RES=/tmp/res3
br() {  # br GPU SAMPLER STEPS GUIDANCE
  CUDA_VISIBLE_DEVICES=$1 CONDIFF_WEIGHTS=/tmp/w timeout 150 python3 tools/adherence_breakdown.py --world /tmp/world \
    --offset 1000 --n 934 --device cuda --batch 250 --sampler $2 --steps $3 --guidance $4 --out $RES/v_$2_$3_g$4.json > $RES/v_$2_$3_g$4.log 2>&1
}
( br 0 dpmpp_2m 20 5; br 0 dpmpp_2m 20 7.5 ) & ( br 1 dpmpp_2m 30 5; br 1 dpmpp_2m 20 10 ) &
( br 2 dpmpp_2m 50 5; br 2 dpmpp_2m 30 7.5 ) & ( br 3 ddim 50 5; br 3 euler_ancestral 30 5 ) & wait
el evaluated
for f in $RES/v_*.json; do echo "$(basename $f) $(grep '"adherence top5, generated"' $f)"; done
(cd /tmp && tar cf $OUT/c3.tar res3); ls -la $OUT
