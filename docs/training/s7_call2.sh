# Session 7, call 2 (4 GPUs): the chosen arm of call 1 (carried int8, xz-compressed to fit the 64 MiB tree) —
# adherence breakdown on 1000 held-out prompts, and the evaluate stage (γ sweep, FID-style distances for three
# samplers at 10/20/50 steps) on 200 and on 1000 prompts.
set -u
date
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .device/base7/whl/*.whl || exit 1
. .device/s5/env.sh
unxz() { python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$1" "$2"; }
rm -rf /tmp/minilm; mkdir -p /tmp/minilm; cp .device/base7/minilm/*.json .device/base7/minilm/vocab.txt /tmp/minilm/
unxz .device/base7/minilm/minilm_compact.safetensors.xz /tmp/minilm/minilm_compact.safetensors
rm -rf /tmp/w; mkdir -p /tmp/w/ldm; cp -r condiff/weights/vae condiff/weights/evalenc /tmp/w/
for f in .device/initS7b/ldm/*; do case $f in *.xz) unxz $f /tmp/w/ldm/$(basename $f .xz);; *) cp $f /tmp/w/ldm/;; esac; done
python3 -c "from condiff.models.weights import load_state; print(len(load_state('/tmp/w/ldm')), 'tensors, checksums verified')" || exit 2
nvidia-smi -L
[ -f /tmp/world/manifest.json ] || python3 -m condiff.cli data build --from-pack .device/base7/world-pack-v1.json.xz --out /tmp/world --workers 60 > /tmp/build.log 2>&1
tail -1 /tmp/build.log; date
CUDA_VISIBLE_DEVICES=0 CONDIFF_WEIGHTS=/tmp/w python3 tools/adherence_breakdown.py --world /tmp/world --n 1000 --list \
  --device cuda --batch 250 --out /tmp/br1000.json > /tmp/br1000.log 2>&1 &
CUDA_VISIBLE_DEVICES=1 $J --init /tmp/w --out /tmp/e1000 --stages evaluate --eval-prompts 1000 > /tmp/e1000.log 2>&1 &
CUDA_VISIBLE_DEVICES=2 $J --init /tmp/w --out /tmp/e200 --stages evaluate > /tmp/e200.log 2>&1 &
wait
date
tail -n 3 /tmp/br1000.log /tmp/e1000.log /tmp/e200.log
mkdir -p /tmp/res8; cp /tmp/br1000.* /tmp/e1000.log /tmp/e200.log /tmp/res8/
cp /tmp/e1000/job_log.json /tmp/res8/eval1000_job_log.json; cp /tmp/e200/job_log.json /tmp/res8/eval200_job_log.json
pack c2 res8
date
