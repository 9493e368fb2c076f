# Session 4, call 2 (same warm 2 × H100 machine): pick the evalenc variant with the better held-out top-5
# retrieval, then evaluate the shipped `ldm` (fp16) and the new `ldm-inpaint` with it (200 and 1000 prompts),
# and the previous `ldm-inpaint` (int8 copy) against blending with the same evalenc.
set -u
date
. .device/s4/s3_env.sh
python3 - <<'PY'
import json, shutil
logs = {v: json.load(open(f"/tmp/c1_{v}/job_log.json"))["evalenc"] for v in ("small", "wide")}
for v, l in logs.items(): print(v, l["steps"], l["held-out top1"], l["held-out top5"])
best = max(logs, key=lambda v: (logs[v]["held-out top5"], logs[v]["held-out top1"]))
print("chosen evalenc:", best)
shutil.rmtree("/tmp/init2", ignore_errors=True)
shutil.copytree(f"/tmp/c1_{best}/weights/evalenc", "/tmp/init2/evalenc")
PY
cp -r /tmp/initA/vae .device/initS4b/ldm /tmp/c1_inp/weights/ldm-inpaint /tmp/init2/
rm -rf /tmp/wold; mkdir -p /tmp/wold; cp -r /tmp/init2/vae /tmp/init2/ldm /tmp/init2/evalenc /tmp/initA/ldm-inpaint /tmp/wold/
ls /tmp/init2 /tmp/wold
T="python3 tools/inpainting_paired_eval.py --world /tmp/world --device cuda --batch 250"
CUDA_VISIBLE_DEVICES=0 sh -c "$J --init /tmp/init2 --out /tmp/c2_200 --stages evaluate > /tmp/c2_200.log 2>&1; for m in box subject; do CONDIFF_WEIGHTS=/tmp/wold $T --n 200 --mask \$m --out /tmp/c2_old_200_\$m.json > /tmp/c2_old_200_\$m.log 2>&1; done" &
CUDA_VISIBLE_DEVICES=1 sh -c "$J --init /tmp/init2 --out /tmp/c2_1000 --stages evaluate --eval-prompts 1000 > /tmp/c2_1000.log 2>&1; for m in box subject; do CONDIFF_WEIGHTS=/tmp/wold $T --n 1000 --mask \$m --out /tmp/c2_old_1000_\$m.json > /tmp/c2_old_1000_\$m.log 2>&1; done" &
wait
date
grep -h "Error\|error" /tmp/c2_*.log | tail -20
mkdir -p /tmp/c2res; cp /tmp/c2_*.log /tmp/c2_old_*.json /tmp/c2res/; cp /tmp/c2_200/job_log.json /tmp/c2res/eval200_job_log.json; cp /tmp/c2_1000/job_log.json /tmp/c2res/eval1000_job_log.json
pack c2 c2res
