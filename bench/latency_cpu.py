"""CPU latency of the built-in text-to-image model, and condiff's U-Net vs. diffusers' on the same weights.

    python bench/latency_cpu.py [--repeats 3] [--threads 2]

Reports (1) end-to-end seconds for one 128×128 image at the default sampler and steps (DPM++(2M),
20 steps, CFG γ = 5 → 40 U-Net evaluations, VAE decode included) — the issue's bar is ≤ 10 s on the
2-core machine — and (2) the time of one CFG U-Net call (batch 2) in condiff and in diffusers'
UNet2DConditionModel loaded with the very same state dict (the parameter names are identical), as a
ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from condiff.denoisers import Cond
    from condiff.models.registry import load_model
    from condiff.pipelines.text2img import generate

    model = load_model("builtin")
    e2e = _time(lambda: generate(model, "a cat face, twemoji style", seed=0, show_progress=False), a.repeats)
    print(f"end to end, 1 image 128x128, default sampler/steps/guidance: {e2e:.2f} s (bar: <= 10 s)")

    x = torch.randn(2, 4, 32, 32)
    t = torch.tensor([500.0, 500.0])
    ctx, _ = model.text_encoder(["a cat face", ""])
    ours = _time(lambda: model.unet(x, t, Cond(context=ctx)), a.repeats * 5)
    try:
        from diffusers import UNet2DConditionModel
    except ImportError:
        print(f"condiff U-Net, one CFG call: {ours * 1e3:.1f} ms (diffusers not installed: no baseline)")
        return
    ref = UNet2DConditionModel(**model.unet.config.to_diffusers_config()).eval()
    ref.load_state_dict(model.unet.state_dict())
    with torch.no_grad():
        theirs = _time(lambda: ref(x, t, ctx), a.repeats * 5)
        err = (ref(x, t, ctx).sample - model.unet(x, t, Cond(context=ctx))).abs().max().item()
    print(f"one CFG U-Net call (batch 2): condiff {ours * 1e3:.1f} ms, diffusers {theirs * 1e3:.1f} ms, "
          f"ratio condiff/diffusers {ours / theirs:.2f} (max abs diff {err:.1e})")


if __name__ == "__main__":
    with torch.no_grad():
        main()
