#!/usr/bin/env bash
# Reproduce the shipped built-in weights (condiff/weights/) from a source checkout: the sequence of training-job
# runs behind each component, with the step counts, learning rates and batch sizes its model card records.
#
#   training/reproduce.sh                       # everything, on the GPUs of this machine
#   SMALL=1 training/reproduce.sh               # the same sequence with tiny networks and 3 steps a stage (CPU smoke test)
#
# Settings (environment):
#   WORLD  built world (default build/world; built here from the npm/Debian sources, or from PACK when set)
#   PACK   a world pack (`condiff data pack`) to render the world from on a machine without network
#   RUNS   where each run writes its folder (default runs/reproduce); W=$RUNS/weights collects the components
#   NPROC  processes of the data-parallel runs (default 4; the shipped `ldm` used 4 then 2 GPUs)
#   SMALL  1 = `--small` (smoke test; the result is not a model)
#   FROM   number of the first run to do (e.g. 07): resume after the runs before it finished into $W
#
# Each run warm-starts from the components collected so far (--init $W) and its exports replace them there, so
# $W ends as the shipped set. The runs of the original sessions were time-boxed; here every stage runs its
# recorded step count (large --minutes), so figures land within the intervals the cards quote, not bit for bit.
# What each run measured, and what was tried and not shipped, is in docs/training_log.md.
set -euo pipefail

WORLD=${WORLD:-build/world}
RUNS=${RUNS:-runs/reproduce}
NPROC=${NPROC:-4}
W=$RUNS/weights
EXTRA=()
if [ "${SMALL:-0}" = 1 ]; then  # later options win: every stage 3 steps at batch 4, whatever a run asks for
  all=vae,evalenc,ldm,classifier,inpaint,cascade-base,cascade-sr,unclip-prior,unclip-decoder
  all=$all,controlnet-canny,controlnet-lineart,controlnet-softedge,controlnet-depth,controlnet-normal,controlnet-pose
  EXTRA=(--small --device cpu --steps "${all//,/=3,}=3" --batch "${all//,/=4,}=4")
  NPROC=1
fi
BOX="--minutes vae=999,evalenc=999,ldm=999,classifier=999,inpaint=999,controlnet=999,cascade-base=999,cascade-sr=999,unclip-prior=999,unclip-decoder=999"

if [ ! -f "$WORLD/manifest.json" ]; then
  if [ -n "${PACK:-}" ]; then condiff data build --from-pack "$PACK" --out "$WORLD"
  elif [ "${SMALL:-0}" = 1 ]; then condiff data build --small --out "$WORLD"
  else condiff data build --out "$WORLD"; fi
fi
mkdir -p "$W"

collect() {  # the components a run exported replace those in $W
  if [ -d "$RUNS/$1/weights" ]; then cp -r "$RUNS/$1/weights/." "$W/"; fi
}

skip() { [[ "${1%%-*}" < "${FROM:-00}" ]]; }  # runs numbered below FROM are done already

job() {  # job NAME JOB-OPTIONS…: one run of the training job; its exported components replace those in $W
  local name=$1; shift
  skip "$name" && return
  echo "== $name: $*"
  condiff train job --world "$WORLD" --out "$RUNS/$name" --init "$W" $BOX "$@" "${EXTRA[@]}"
  collect "$name"
}

parallel_job() {  # the same under torchrun (data-parallel training stages; rank 0 exports)
  local name=$1; shift
  skip "$name" && return
  echo "== $name (torchrun, $NPROC processes): $*"
  torchrun --standalone --nproc-per-node "$NPROC" -m training.job --world "$WORLD" --out "$RUNS/$name" --init "$W" \
    $BOX "$@" "${EXTRA[@]}"
  collect "$name"
}

# 1. autoencoder (f = 4) and the first evaluation encoder, frozen as unCLIP's image tower `unclip-embedder`
job 01-vae --stages vae --steps vae=1300
job 02-evalenc-first --stages evalenc --evalenc-channels 32,64,128,256 --steps evalenc=1350
skip 02 || python -m training.unclip freeze-embedder --weights "$W" --no-point-unclip

# 2. text-to-image U-Net at decoder depth 1: 15,250 steps at lr 4e-4 (the time boxes never let it decay)
job 03-ldm --stages ldm --ldm-decoder-depth 1 --int8 '' --steps ldm=15250 --lr ldm=4e-4 --min-lr-ratio ldm=1

# 3. on that base: inpainting U-Net, five ControlNets, noisy style classifier, cascade and unCLIP
job 04-inpaint --stages inpaint --ldm-decoder-depth 1 --int8 '' --steps inpaint=3900 --min-lr-ratio inpaint=1
job 05-controlnets --stages controlnet-canny,controlnet-softedge,controlnet-depth,controlnet-lineart,controlnet-normal \
  --steps controlnet-canny=1100,controlnet-softedge=1100,controlnet-depth=1100,controlnet-lineart=1800,controlnet-normal=1800 \
  --lr controlnet-canny=3e-4,controlnet-softedge=3e-4,controlnet-depth=3e-4,controlnet-lineart=3e-4,controlnet-normal=3e-4
job 06-classifier --stages classifier --steps classifier=900
job 07-cascade-unclip --stages cascade-base,cascade-sr,unclip-prior,unclip-decoder \
  --steps cascade-base=800,cascade-sr=1750,unclip-prior=1300,unclip-decoder=1550

# 4. annealing runs of the base and the inpainting U-Net; the ControlNets follow the annealed base, pose starts on it
job 08-anneal --stages ldm,inpaint --ldm-decoder-depth 1 --int8 '' \
  --steps ldm=4800,inpaint=4600 --lr ldm=3e-4,inpaint=2e-4 --min-lr-ratio ldm=0.03,inpaint=0.03
job 09-controlnets --stages controlnet-canny,controlnet-softedge,controlnet-depth,controlnet-lineart,controlnet-normal,controlnet-pose \
  --steps controlnet-canny=600,controlnet-softedge=600,controlnet-depth=600,controlnet-lineart=650,controlnet-normal=650,controlnet-pose=1200 \
  --lr controlnet-pose=3e-4

# 5. the shipped evaluation encoder: wider tower, 1500 steps from scratch, then 2600 warm-started
job 10-evalenc --stages evalenc --evalenc-channels 48,96,192,384 --steps evalenc=1500 --lr evalenc=1e-3 \
  --min-lr-ratio evalenc=0.02
job 11-evalenc --stages evalenc --evalenc-channels 48,96,192,384 --steps evalenc=2600 --lr evalenc=5e-4 \
  --min-lr-ratio evalenc=0.02

# 6. the shipped `ldm`: 4200 data-parallel steps at batch 1024, then grown to decoder depth 3 (function-preserving)
#    and trained 2400 steps at batch 512; shipped int8
parallel_job 12-ldm --stages ldm --ldm-decoder-depth 1 --int8 '' --batch ldm=1024 --steps ldm=4200 --lr ldm=4e-4 \
  --min-lr-ratio ldm=0.03
parallel_job 13-ldm-grown --stages ldm --ldm-decoder-depth 3 --int8 ldm --batch ldm=512 --steps ldm=2400 \
  --lr ldm=2e-4 --min-lr-ratio ldm=0.05

# 7. the model cards' measurements (1000 held-out prompts) and the command-line ones
job 14-evaluate --stages evaluate --eval-prompts 1000
echo "components in $W; compare with condiff/weights/*/MODEL_CARD.md, e.g. condiff eval adherence --n 1000"
