"""Inpainting model vs. zero-shot latent blend on held-out pictures, paired (CPU or GPU).

    python tools/inpainting_paired_eval.py --world build/world --n 160 --out docs/training/cpu_inpaint_eval_s2.json

The job's own measurement (:func:`condiff.train.recipes.evaluate.evaluate_inpainting`) on the shipped
weights (or those of the folder ``CONDIFF_WEIGHTS`` names): centre-box mask (``--mask box``) or the
picture's own subject (``--mask subject``), the caption as prompt, 20 DPM++ steps at the default
guidance (or ``--guidance``), the same pictures, prompts and seeds for both methods; evalenc similarity of the composite to the prompt, its
paired per-picture difference (bootstrap 95 % CI) and the pixel error outside the mask. The pictures
are the first ``n`` of the evaluate stage's seeded permutation of the held-out split (for ``subject``: the
first ``n`` whose subject covers 5–70 % of the picture).
"""

from __future__ import annotations

import argparse
import json
import time

from _report import add_output_options, check_output, write_output


def main() -> None:
    from condiff.models.registry import WEIGHTS_DIR, load_model
    from condiff.train.recipes.evaluate import INPAINT_MASKS, evaluate_inpainting, inpaint_eval_records, load_evalenc
    from condiff.train.recipes.world import load_world

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="build/world")
    p.add_argument("--n", type=int, default=160)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--mask", choices=INPAINT_MASKS, default="box",
                   help="box: the centre quarter; subject: the picture's own subject, dilated")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance of both methods (default: the model's, 5)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    add_output_options(p)
    a = p.parse_args()
    check_output(a)
    model, ev = load_model("builtin", device=a.device), load_world(a.world).eval
    pick = inpaint_eval_records(ev, a.n, a.mask)
    t0 = time.time()
    rep = evaluate_inpainting(model, load_evalenc(WEIGHTS_DIR / "evalenc", a.device), ev, pick, a.batch, a.mask,
                              guidance=a.guidance)
    rep.update(n=len(pick), seconds=round(time.time() - t0, 1))
    print(json.dumps(rep, indent=1))
    write_output(a, rep)


if __name__ == "__main__":
    main()
