# Session 4, call 3 (same warm machine): the wide evalenc trained longer, two ways (fresh 2600 steps;
# call 1's 1500 steps continued for 2600 at lr 5e-4), the better held-out top-5 is evaluated at 200 and 1000 prompts.
set -u
date
. .device/s4/s3_env.sh
EV="--stages evalenc --evalenc-channels 48,96,192,384 --min-lr-ratio evalenc=0.02 --minutes evalenc=5.2 --steps evalenc=2600"
mkdir -p /tmp/init3c; cp -r /tmp/c1_wide/weights/evalenc /tmp/init3c/
CUDA_VISIBLE_DEVICES=0 $J --out /tmp/c3_fresh $EV --lr evalenc=1e-3 > /tmp/c3_fresh.log 2>&1 &
CUDA_VISIBLE_DEVICES=1 $J --init /tmp/init3c --out /tmp/c3_cont $EV --lr evalenc=5e-4 > /tmp/c3_cont.log 2>&1 &
wait
date
python3 - <<'PY'
import json, shutil
logs = {v: json.load(open(f"/tmp/c3_{v}/job_log.json"))["evalenc"] for v in ("fresh", "cont")}
for v, l in logs.items(): print(v, l["steps"], l["held-out top1"], l["held-out top5"])
best = max(logs, key=lambda v: (logs[v]["held-out top5"], logs[v]["held-out top1"]))
print("chosen evalenc:", best)
shutil.rmtree("/tmp/init3", ignore_errors=True)
shutil.copytree("/tmp/init2", "/tmp/init3", ignore=shutil.ignore_patterns("evalenc"))
shutil.copytree(f"/tmp/c3_{best}/weights/evalenc", "/tmp/init3/evalenc")
PY
CUDA_VISIBLE_DEVICES=0 $J --init /tmp/init3 --out /tmp/c3_200 --stages evaluate > /tmp/c3_200.log 2>&1 &
CUDA_VISIBLE_DEVICES=1 $J --init /tmp/init3 --out /tmp/c3_1000 --stages evaluate --eval-prompts 1000 > /tmp/c3_1000.log 2>&1 &
wait
date
mkdir -p /tmp/c3res; cp /tmp/c3_*.log /tmp/c3res/; for v in fresh cont 200 1000; do cp /tmp/c3_$v/job_log.json /tmp/c3res/${v}_job_log.json; done
pack c3 c3_fresh/weights c3_cont/weights c3res
