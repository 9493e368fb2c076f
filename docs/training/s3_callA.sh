set -u
date
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .device/base/whl/*.whl || exit 1
. .device/s3/env.sh
rm -rf /tmp/minilm; cp -r .device/base/minilm /tmp/minilm
nvidia-smi -L
[ -f /tmp/world/manifest.json ] || python3 -m condiff.cli data build --from-pack .device/base/world-pack-v1.json.xz --out /tmp/world --workers 16 > /tmp/build.log 2>&1
tail -1 /tmp/build.log; date
rm -rf /tmp/init; mkdir -p /tmp/init; cp -r .device/initS3/* /tmp/init/
$J --init /tmp/init --out /tmp/a_old --stages evaluate --eval-prompts 1000 > /tmp/a_old.log 2>&1 &
$J --init /tmp/init --out /tmp/a_enc --stages evalenc --minutes evalenc=2.6 --steps evalenc=2000 --lr evalenc=1e-3 --min-lr-ratio evalenc=0.02 > /tmp/a_enc.log 2>&1
date; grep -h "steps in\|Error" /tmp/a_enc.log
wait
date
mkdir -p /tmp/alogs; cp /tmp/a_old.log /tmp/a_enc.log /tmp/alogs/
pack a a_enc/weights a_enc/job_log.json a_old/job_log.json alogs
