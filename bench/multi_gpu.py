"""Scaling of sharded generation under torchrun: images/s and efficiency for 1, 2, 4 … processes.

    python bench/multi_gpu.py --procs 1 2 4 8 [--images 512] [--steps 20] [--batch 32] [--device cuda]
                              [--out bench/results/multi_gpu.json]

For each process count N it runs ``torchrun --nproc-per-node N -m condiff.cli generate --prompts FILE``
on the same prompt file (held-out captions of the built-in world when available, else a fixed list),
times the whole command and the generation alone (the slowest rank's seconds from the run's
``manifest.json``, which leaves out start-up and model loading), and reports

* images/s (whole command and generation alone) and the scaling efficiency
  ``ips(N) / (N · ips(1))`` of the generation;
* whether every image is identical to the one-process run (max |Δ| of the 8-bit pixels), which the
  sharding rules guarantee on one kind of device.

It writes JSON (with the devices' names) and prints a markdown table. With ``--device cpu`` it
runs on gloo (useful only to check the harness; 2 cores give no speed-up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

_FALLBACK = ["a cat face, twemoji style", "a red heart, flat style", "a green turtle, openmoji",
             "a rocket, noto style", "a sunflower, fluent style", "a pizza slice, twemoji style"]


def _prompts(n: int) -> list[str]:
    return [_FALLBACK[i % len(_FALLBACK)] for i in range(n)]


def _device_names(device: str) -> list[str]:
    if device != "cuda":
        return ["cpu"]
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def _run(n: int, prompt_file: Path, out: Path, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-port", str(29500 + n),
           "-m", "condiff.cli", "generate", "--prompts", str(prompt_file), "--out", str(out), "--steps", str(a.steps),
           "--device", a.device, "--max-batch", str(a.batch)] if n > 1 else [
           sys.executable, "-m", "condiff.cli", "generate", "--prompts", str(prompt_file), "--out", str(out),
           "--steps", str(a.steps), "--device", a.device, "--max-batch", str(a.batch)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{n} processes failed:\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    gen = max(r["seconds"] for r in manifest["ranks"])
    return {"procs": n, "wall_s": round(wall, 2), "generation_s": round(gen, 2),
            "images_per_s_wall": round(a.images / wall, 2), "images_per_s_generation": round(a.images / gen, 2)}


def _max_diff(a: Path, b: Path, count: int) -> int:
    worst = 0
    for i in range(count):
        x = np.asarray(Image.open(a / f"{i:05d}.png"), dtype=np.int16)
        y = np.asarray(Image.open(b / f"{i:05d}.png"), dtype=np.int16)
        worst = max(worst, int(np.abs(x - y).max()))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=Path("bench/results/multi_gpu.json"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prompt_file = tmp / "prompts.txt"
        prompt_file.write_text("\n".join(_prompts(a.images)) + "\n", encoding="utf-8")
        rows = [_run(n, prompt_file, tmp / f"n{n}", a) for n in a.procs]
        base = rows[0]
        for r in rows:
            r["efficiency"] = round(r["images_per_s_generation"] / (r["procs"] / base["procs"] * base["images_per_s_generation"]), 3)
            r["max_pixel_diff_vs_first"] = _max_diff(tmp / f"n{base['procs']}", tmp / f"n{r['procs']}", a.images)
    result = {"devices": _device_names(a.device), "images": a.images, "steps": a.steps, "batch": a.batch, "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print("| processes | images/s (generation) | images/s (whole command) | efficiency | max pixel Δ |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['procs']} | {r['images_per_s_generation']} | {r['images_per_s_wall']} | {r['efficiency']} "
              f"| {r['max_pixel_diff_vs_first']} |")


if __name__ == "__main__":
    main()
