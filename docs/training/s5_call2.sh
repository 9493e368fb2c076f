# Session 5, call 2 (same warm 4 × H100 machine): the inpainting U-Net fine-tuned data-parallel (2 GPUs) from
# call 1's `ldm` with fresh zero-initialised mask channels, while the other two GPUs evaluate call 1's `ldm`
# (200 and 1000 prompts, evalenc of session 4); then both inpainting U-Nets (new; session 4's, from the
# previous `ldm`) against the new `ldm`'s zero-shot blend, paired, at 200 and 1000 pictures, box and subject.
set -u
date
. .device/s5/env.sh
[ -f /tmp/d1/weights/ldm/config.json ] || { echo "fresh machine: call 1's ldm is not here"; exit 3; }
rm -rf /tmp/init2; mkdir -p /tmp/init2; cp -r /tmp/init1/vae /tmp/init1/evalenc /tmp/d1/weights/ldm /tmp/init2/
CUDA_VISIBLE_DEVICES=0,1 $TR --nproc-per-node 2 -m condiff.train.recipes.job --world /tmp/world --init /tmp/init2 \
  --out /tmp/d2inp --stages inpaint --batch inpaint=512 --lr inpaint=2e-4 --min-lr-ratio inpaint=0.03 \
  --steps inpaint=2600 --minutes inpaint=4.6 > /tmp/d2inp.log 2>&1 &
CUDA_VISIBLE_DEVICES=2 $J --init /tmp/init2 --out /tmp/d2e200 --stages evaluate > /tmp/d2e200.log 2>&1 &
CUDA_VISIBLE_DEVICES=3 $J --init /tmp/init2 --out /tmp/d2e1000 --stages evaluate --eval-prompts 1000 > /tmp/d2e1000.log 2>&1 &
wait
date
grep -v Warning /tmp/d2inp.log | tail -4
rm -rf /tmp/wnew /tmp/wold; mkdir -p /tmp/wnew /tmp/wold
cp -r /tmp/init2/* /tmp/wnew/; cp -r /tmp/d2inp/weights/ldm-inpaint /tmp/wnew/
cp -r /tmp/init2/* /tmp/wold/; cp -r .device/initS5b/ldm-inpaint /tmp/wold/
T="python3 tools/inpainting_paired_eval.py --world /tmp/world --device cuda --batch 250"
g=0
for w in new old; do for n in 200 1000; do
  CUDA_VISIBLE_DEVICES=$g sh -c "for m in box subject; do CONDIFF_WEIGHTS=/tmp/w$w $T --n $n --mask \$m --out /tmp/d2_${w}_${n}_\$m.json > /tmp/d2_${w}_${n}_\$m.log 2>&1; done" &
  g=$((g+1))
done; done
wait
date
grep -h "Error\|error" /tmp/d2*.log | tail -20
mkdir -p /tmp/d2res; cp /tmp/d2*.log /tmp/d2_*.json /tmp/d2res/; cp /tmp/d2inp/job_log.json /tmp/d2res/inp_job_log.json
cp /tmp/d2e200/job_log.json /tmp/d2res/eval200_job_log.json; cp /tmp/d2e1000/job_log.json /tmp/d2res/eval1000_job_log.json
cp /tmp/d2inp/runs/inpaint/metrics.jsonl /tmp/d2res/inp_metrics.jsonl
pack d2 d2inp/weights/ldm-inpaint d2res
