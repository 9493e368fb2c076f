# Session 8, call 1 (4 GPUs). Carried: the shipped `ldm` (session-7 arm B, int8, xz), vae, evalenc.
#   GPUs 0,1: inpainting U-Net fine-tuned from B (zero-initialised extra channels), 1600 steps at batch 512, int8;
#             then paired inpainting evaluation (model vs B's blend) on 1000 held-out pictures, box and subject masks
#   GPU 2, 3: two continuations of B with different seeds (E1, E2), 1600 steps at batch 256 each;
#             then adherence on 1000 prompts for B, E1, E2, soup(E1,E2), soup(B,E1,E2)
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
mkdir -p /tmp/res; RES=/tmp/res
# --- inpainting arm (GPUs 0,1), then its evaluation on GPU 0 (box) and 1 (subject)
( CUDA_VISIBLE_DEVICES=0,1 $TR --nproc-per-node 2 -m condiff.train.recipes.job --world /tmp/world --init /tmp/w --out /tmp/inp \
    --stages inpaint --int8 inpaint --batch inpaint=512 --lr inpaint=2e-4 --min-lr-ratio inpaint=0.05 --steps inpaint=1600 \
    --minutes inpaint=3.8 > $RES/inp_train.log 2>&1
  el inpaint trained; grep -v Warning $RES/inp_train.log | tail -n 2
  rm -rf /tmp/wi; mkdir -p /tmp/wi; cp -r /tmp/w/vae /tmp/w/evalenc /tmp/w/ldm /tmp/inp/weights/ldm-inpaint /tmp/wi/
  cp /tmp/inp/job_log.json $RES/inp_job_log.json; cp /tmp/inp/runs/inpaint/metrics.jsonl $RES/inp_metrics.jsonl
  for m in box subject; do
    g=0; [ $m = subject ] && g=1
    CUDA_VISIBLE_DEVICES=$g CONDIFF_WEIGHTS=/tmp/wi timeout 200 python3 tools/inpainting_paired_eval.py --world /tmp/world --n 1000 \
      --mask $m --device cuda --batch 250 --out $RES/inp_eval_$m.json > $RES/inp_eval_$m.log 2>&1 &
  done; wait; el inpaint evaluated ) &
# --- two continuations of B (GPUs 2, 3)
for s in 1 2; do
  CUDA_VISIBLE_DEVICES=$((s + 1)) python3 -m condiff.train.recipes.job --world /tmp/world --init /tmp/w --out /tmp/e$s \
    --stages ldm --int8 ldm --batch ldm=256 --lr ldm=1.5e-4 --min-lr-ratio ldm=0.05 --steps ldm=1600 --seed ldm=$s \
    --minutes ldm=3.8 > $RES/e${s}_train.log 2>&1 &
  PIDS="${PIDS:-} $!"
done
wait $PIDS
el continuations trained
for s in 1 2; do grep -v Warning $RES/e${s}_train.log | tail -n 1; cp /tmp/e$s/job_log.json $RES/e${s}_job_log.json; done
python3 -m condiff.cli models merge /tmp/e1/weights/ldm /tmp/e2/weights/ldm --out /tmp/soup12
python3 -m condiff.cli models merge /tmp/w/ldm /tmp/e1/weights/ldm /tmp/e2/weights/ldm --out /tmp/soupB12
br() {  # br NAME LDM_DIR GPU
  rm -rf /tmp/w_$1; mkdir -p /tmp/w_$1; cp -r /tmp/w/vae /tmp/w/evalenc /tmp/w_$1/; cp -r $2 /tmp/w_$1/ldm
  CUDA_VISIBLE_DEVICES=$3 CONDIFF_WEIGHTS=/tmp/w_$1 timeout 150 python3 tools/adherence_breakdown.py --world /tmp/world --n 1000 \
    --list --device cuda --batch 250 --out $RES/br_$1.json > $RES/br_$1.log 2>&1
}
( br B /tmp/w/ldm 2; br soup12 /tmp/soup12 2; br E2 /tmp/e2/weights/ldm 2 ) &
( br soupB12 /tmp/soupB12 3; br E1 /tmp/e1/weights/ldm 3 ) &
wait
el all done
for f in $RES/br_*.json; do echo "$f $(grep '"adherence top5, generated"' $f)"; done
for f in $RES/inp_eval_*.json; do echo $f; python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: v for k, v in d.items() if 'blend' in k})" $f; done
mkdir -p /tmp/pk; cp -r /tmp/inp/weights/ldm-inpaint /tmp/pk/inpaint; cp -r /tmp/e1/weights/ldm /tmp/pk/e1; cp -r /tmp/e2/weights/ldm /tmp/pk/e2; cp -r $RES /tmp/pk/res
(cd /tmp && tar cf - pk | split -b 15M - "$OUT/c1.tar.")
ls -la $OUT; el packed
