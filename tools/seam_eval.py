"""Seam error of inpainting composites with and without seam-aware blending, on held-out pictures.

    python tools/seam_eval.py --world build/world --n 48 --mask subject --out seams.json

For each held-out picture (the evaluate stage's masks: ``box`` = centre quarter, ``subject`` = the
picture's own subject, dilated) the shipped built-in model inpaints once per method (``model`` and
``blend``, caption as prompt, 20 DPM++ steps, default guidance); the raw decoded output is then put
back into the original with every way :func:`condiff.compositing.blend` offers — plain alpha paste,
Laplacian pyramid, Poisson, each with and without colour matching — and scored by
:func:`condiff.compositing.seam_error`: the seam the composite *adds*, seam(composite) −
seam(original) (0 = the border is as smooth as in the untouched picture), with a bootstrap 95 % CI,
and the largest pixel change outside the mask (0 = exact).
"""

from __future__ import annotations

import argparse
import json
import time

from _report import add_output_options, check_output, write_output


def main() -> None:
    import torch

    from condiff.compositing import BLEND_METHODS, blend, seam_error
    from condiff.metrics.bootstrap import bootstrap_ci
    from condiff.models.registry import load_model
    from condiff.pipelines.inpaint import inpaint
    from condiff.train.recipes.evaluate import INPAINT_MASKS, inpaint_eval_masks, inpaint_eval_records
    from condiff.train.recipes.world import load_world

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="build/world")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--mask", choices=INPAINT_MASKS, default="subject")
    add_output_options(p)
    a = p.parse_args()
    check_output(a)
    model, ev = load_model("builtin"), load_world(a.world).eval
    idx = inpaint_eval_records(ev, a.n, a.mask)
    images = ev.images[idx].float() / 255
    masks = inpaint_eval_masks(ev, idx, a.mask)
    prompts = [ev.captions[i][0] for i in idx]
    base = torch.tensor([seam_error(images[i:i + 1], masks[i:i + 1]) for i in range(len(idx))])
    t0 = time.time()
    report: dict = {"mask": a.mask, "pictures": len(idx), "seam of the original pictures": round(float(base.mean()), 4)}
    for method in ("model", "blend"):
        raws = []
        for i in range(0, len(idx), a.batch):
            res = inpaint(model, images[i:i + a.batch], masks[i:i + a.batch], prompts[i:i + a.batch], method=method,
                          steps=20, seed=20_000 + i, show_progress=False)
            raws.append(res.extras["raw"].float().cpu())
        raw = torch.cat(raws)
        rows = {}
        for how in BLEND_METHODS:
            for cm in (False, True):
                out = blend(images, raw, masks, method=how, color_match=cm)
                added = torch.tensor([seam_error(out[i:i + 1], masks[i:i + 1]) for i in range(len(idx))]) - base
                ci = bootstrap_ci(added, seed=0)
                outside = float(((out - images).abs() * (masks == 0)).amax())
                rows[how + (" + colour match" if cm else "")] = {
                    "seam added": f"{ci.mean:.4f} [{ci.lo:.4f}, {ci.hi:.4f}]", "max change outside the mask": outside}
        report[method] = rows
        print(json.dumps({method: rows}, indent=1), flush=True)
    report["seconds"] = round(time.time() - t0, 1)
    write_output(a, report)


if __name__ == "__main__":
    main()
