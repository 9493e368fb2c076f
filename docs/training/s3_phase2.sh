set -u
date
. .device/s3/env.sh
cp -r /tmp/p1g0/weights/ldm /tmp/p1g1/weights/ldm-inpaint /tmp/init/
for d in /tmp/p1g2/weights/controlnet-* /tmp/p1g3/weights/controlnet-*; do cp -r $d /tmp/init/; done
ls /tmp/init
FT="--lr controlnet-normal=1e-4,controlnet-lineart=1e-4,controlnet-canny=1e-4,controlnet-softedge=1e-4,controlnet-depth=1e-4,controlnet-pose=3e-4"
ST="--steps controlnet-normal=650,controlnet-lineart=650,controlnet-canny=600,controlnet-softedge=600,controlnet-depth=600,controlnet-pose=1200"
MI="--minutes controlnet-normal=1.2,controlnet-lineart=1.2,controlnet-canny=1.1,controlnet-softedge=1.1,controlnet-depth=1.1,controlnet-pose=2.1"
CUDA_VISIBLE_DEVICES=0 $J --init /tmp/init --out /tmp/p2g0 --stages evaluate > /tmp/p2g0.log 2>&1 &
CUDA_VISIBLE_DEVICES=1 $J --init /tmp/init --out /tmp/p2g1 --stages controlnet-pose,controlnet-depth $FT $ST $MI > /tmp/p2g1.log 2>&1 &
CUDA_VISIBLE_DEVICES=2 $J --init /tmp/init --out /tmp/p2g2 --stages controlnet-normal,controlnet-lineart,controlnet-softedge $FT $ST $MI > /tmp/p2g2.log 2>&1 &
CUDA_VISIBLE_DEVICES=3 sh -c "$J --init /tmp/init_old --out /tmp/p2g3 --stages evaluate > /tmp/p2g3.log 2>&1; $J --init /tmp/init --out /tmp/p2g3b --stages controlnet-canny $FT $ST $MI > /tmp/p2g3b.log 2>&1" &
wait
date
grep -h "steps in\|Error\|error" /tmp/p2g*.log | tail -20
mkdir -p /tmp/p2logs; cp /tmp/p2g*.log /tmp/p2logs/
pack p2 p2g1/weights p2g2/weights p2g3b/weights p2g0/job_log.json p2g1/job_log.json p2g2/job_log.json p2g3/job_log.json p2g3b/job_log.json p2logs p1g0/job_log.json p1g1/job_log.json p1g2/job_log.json p1g3/job_log.json p1g0/ldm_samples.png p1g0/p1g0.log p1g0/p1g1.log p1g0/p1g2.log p1g0/p1g3.log
