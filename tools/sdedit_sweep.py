"""SDEdit faithfulness vs. realism over the strength t0 on held-out sketches (thesis §3.1.2, Fig. 4.2).

    python tools/sdedit_sweep.py --world build/world --n 32 --out sdedit.json

Inputs are the held-out pictures' line art drawn black on white (the world's ``lineart`` maps, the
sketches of experiment 1), the prompt is the picture's caption, one seed per picture (the same at
every t0), 20 DPM++ steps at the default guidance with the shipped built-in model. For every
t0 ∈ {0, .2, .4, .6, .8, 1}: SSIM and RMSE of the output to the input sketch (faithfulness), the
evalenc similarity to the caption (realism / adherence) and to the real picture, each with a
bootstrap 95 % CI, plus the paired change of SSIM from each t0 to the next (the faithfulness curve
falls monotonically where every interval lies below zero).
"""

from __future__ import annotations

import argparse
import json
import time

from _report import add_output_options, check_output, write_output

STRENGTHS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def main() -> None:
    import torch

    from condiff.metrics.bootstrap import bootstrap_ci
    from condiff.metrics.image import ssim
    from condiff.models.registry import WEIGHTS_DIR, load_model
    from condiff.pipelines.text2img import sdedit
    from condiff.train.recipes.evaluate import _features, eval_order, load_evalenc
    from condiff.train.recipes.world import load_world

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="build/world")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    add_output_options(p)
    a = p.parse_args()
    check_output(a)
    model, ev = load_model("builtin"), load_world(a.world).eval
    enc = load_evalenc(WEIGHTS_DIR / "evalenc", "cpu")
    idx = eval_order(ev)[: a.n]
    sketches = (255 - ev.lineart[idx].float())[:, None].expand(-1, 3, -1, -1) / 255
    real = ev.images[idx].float() / 255
    prompts = [ev.captions[i][0] for i in idx]
    txt = model.text_encoder.pooled(prompts).float()
    real_emb = _features(enc, real)

    def ci(v) -> str:
        c = bootstrap_ci(v, seed=0)
        return f"{c.mean:.4f} [{c.lo:.4f}, {c.hi:.4f}]"

    t0 = time.time()
    report: dict = {"pictures": len(idx), "input": "held-out line art, black on white", "per_strength": {}}
    ssims = []
    for s in STRENGTHS:
        outs = [sdedit(model, sketches[i:i + a.batch], prompts[i:i + a.batch], strength=s, steps=20,
                       seed=list(range(30_000 + i, 30_000 + min(i + a.batch, len(idx)))), show_progress=False).images
                for i in range(0, len(idx), a.batch)]
        out = torch.cat(outs).float().cpu()
        sim = torch.stack([ssim(out[i:i + 1], sketches[i:i + 1]).reshape(()) for i in range(len(idx))])
        rmse = ((out - sketches) ** 2).flatten(1).mean(1).sqrt()
        emb = _features(enc, out)
        ssims.append(sim)
        report["per_strength"][f"t0={s:g}"] = {
            "SSIM to the sketch": ci(sim), "RMSE to the sketch": ci(rmse),
            "evalenc similarity to the caption": ci((emb * txt).sum(1)),
            "evalenc similarity to the real picture": ci((emb * real_emb).sum(1))}
        print(f"t0={s:g}", json.dumps(report["per_strength"][f"t0={s:g}"]), flush=True)
    report["SSIM change to the next t0 (paired)"] = {
        f"{STRENGTHS[k]:g} -> {STRENGTHS[k + 1]:g}": ci(ssims[k + 1] - ssims[k]) for k in range(len(STRENGTHS) - 1)}
    report["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(report["SSIM change to the next t0 (paired)"], indent=1))
    write_output(a, report)


if __name__ == "__main__":
    main()
