#!/usr/bin/env bash
# Stage what bench/gpu_speed.py and a half-precision smoke test need on a lent GPU machine.
#
# The checkout's tracked files (the built-in weights, ~143 MiB) are over the device tool's 64 MiB
# travel limit, so a run carries one ignored folder instead: .device/run (~54 MB) with condiff's
# code, bench/, the ldm and vae weights, a compact MiniLM (python -m training.bundle) and the
# diffusers wheel (the GPU image has no diffusers). During the call the index must not list the
# checkout's files (untrack them for the call only, then `git reset`):
#
#   bash bench/device_stage.sh
#   git rm -r -q --cached . && echo '/*' >> .git/info/exclude       # nothing but .device/run travels
#   (device run: carry [".device/run"], command "bash .device/run/run1.sh", then run2.sh)
#   git reset -q && sed -i '/^\/\*$/d' .git/info/exclude              # the index as it was
#
# run1.sh: nvidia-smi, `condiff generate --device cuda` with --dtype auto (fp16), bf16, fp32 and --fast,
# SDEdit in fp16, PSNR of each against fp32, then gpu_speed.py step/profile/fp8/text with compile modes.
# run2.sh: gpu_speed.py e2e (batch 1/4/8, eager and compiled) and the built-in model at batch 64.
set -euo pipefail
cd "$(dirname "$0")/.."
S=.device/run
PY=${PY:-.venv/bin/python}
rm -rf "$S"; mkdir -p "$S/w" "$S/whl" "$S/tests"
tar cf - --exclude=condiff/weights --exclude=__pycache__ condiff bench | (cd "$S" && tar xf -)
cp tests/test_half_precision.py tests/conftest.py "$S/tests/"
cp -r condiff/weights/ldm condiff/weights/vae "$S/w/"
PYTHONPATH=. "$PY" -m training.bundle --out "$S/_minilm"   # the word pieces of the world's captions and the experiments
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$S/whl" "diffusers==0.39.0"

cat > "$S/common.sh" <<'EOF'
set -u
cd .device/run
export PYTHONPATH=/tmp/site:$PWD CONDIFF_MINILM_COMPACT=$PWD/_minilm/minilm CONDIFF_WEIGHTS=$PWD/w CONDIFF_PROVENANCE=0 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site whl/*.whl 2>&1 | tail -1
export TORCHINDUCTOR_CACHE_DIR=$PWD/../inductor-cache  # kept between calls while the machine stays warm
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
EOF
cat > "$S/run1.sh" <<'EOF'
. .device/run/common.sh
nvidia-smi -L; python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)"
P="a cat face, twemoji style"
for dt in auto bf16 fp32; do
  timeout 60 python3 -m condiff.cli generate "$P" --device cuda --dtype $dt --seed 3 --no-progress --out $OUT/gen_$dt.png 2>&1 | tail -2
done
timeout 60 python3 -m condiff.cli generate "$P" --device cuda --dtype bf16 --fast --batch 4 --seed 3 --no-progress --out $OUT/fast.png 2>&1 | tail -2
timeout 60 python3 -m condiff.cli sdedit $OUT/gen_fp32.png "a red heart, flat style" --device cuda --strength 0.6 --no-progress --out $OUT/sdedit_fp16.png 2>&1 | tail -1
python3 - <<'PY'
import numpy as np, os
from PIL import Image
o = os.environ["OUT"]; ref = np.asarray(Image.open(f"{o}/gen_fp32.png"), dtype=float)
for n in ("gen_auto", "gen_bf16", "fast-0"):
    p = f"{o}/{n}.png"
    if os.path.exists(p):
        x = np.asarray(Image.open(p), dtype=float); mse = ((x - ref) ** 2).mean()
        print(n, "PSNR vs fp32 %.1f dB" % (10 * np.log10(255**2 / max(mse, 1e-9))))
PY
el smoke
timeout 500 python3 bench/gpu_speed.py --sections step,profile,fp8,text --compile --compile-modes default,reduce-overhead --batches 1,8 --out $OUT --tag part1 2>&1 | grep -v "^USDT" | tail -40
el part1
EOF
cat > "$S/run2.sh" <<'EOF'
. .device/run/common.sh
timeout 575 python3 bench/gpu_speed.py --sections e2e,builtin --compile --e2e-compiled --compiled-batches 1,8 --out $OUT --tag part2 2>&1 | grep -v "^USDT" | tail -40
el part2
EOF
du -sh "$S"
