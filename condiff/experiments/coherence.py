"""Inpainting judged on what it is for: coherence with the surroundings (thesis 3.2.3, Figs. 4.15/4.16).

The built-in model inpaints three ways (:data:`condiff.pipelines.inpaint.INPAINT_METHODS`): the
dedicated inpainting U-Net ("model"), zero-shot latent blending ("blend") and RePaint; each result
is put back into the picture by one of three blending modes (:data:`BLENDS`). This module measures
every method × mode on

* **held-out pictures** of the world (the evaluation split, never trained on), with the centre
  quarter removed and the picture's true caption as the prompt, so the truth is known:
  :func:`condiff.metrics.coherence.coherence_scores` (LPIPS-like, PSNR and SSIM of the fill, seam
  added), the evaluation-encoder prompt score inside the mask (the existing prompt-match score)
  and KID / Fréchet distance of the whole composites to other real held-out pictures;
* the **three thesis tasks** (:func:`condiff.experiments.architectures.experiment2_tasks`), where
  the truth is unknown: the seam added and the prompt-match score.

Methods are compared *paired* — the same pictures, prompts and seeds — with bootstrap 95 %
intervals of the per-picture differences against the reference method (:data:`REFERENCE`); KID
differences are bootstrapped over pictures too. Run it as
``python -m condiff.experiments.coherence --eval-dir DIR --out FILE.json`` (held-out pictures from
``python -m condiff.experiments.memorisation build``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..compositing import blend
from ..metrics.bootstrap import bootstrap_ci, paired_bootstrap_ci
from ..metrics.coherence import coherence_scores, composite_distance
from ..metrics.distribution import mmd2_unbiased, polynomial_kernel

__all__ = ["METHODS", "BLENDS", "REFERENCE", "MEASURES", "centre_box", "measure", "summarize_rows", "markdown_table",
           "main"]

METHODS = ("model", "blend", "repaint")
BLENDS = ("alpha", "laplacian", "poisson")
#: The method every other one is compared with, picture by picture.
REFERENCE = "model/alpha"
#: Per-picture measures and whether higher is better.
MEASURES = {"lpips_like_fill": False, "psnr_fill": True, "ssim_fill": True, "seam_added": False, "evalenc_inside": True}


def centre_box(size: int) -> Tensor:
    """The centre quarter of a size×size picture (h/4…3h/4 × w/4…3w/4) as a mask [1, 1, S, S]."""
    m = torch.zeros(1, 1, size, size)
    m[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return m


def measure(model, evaluator, images: Tensor, masks: Tensor, prompts: Sequence[str], *, seeds: Sequence[int],
            truth: bool, steps: int, guidance: float | None = None, methods: Sequence[str] = METHODS,
            blends: Sequence[str] = BLENDS) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """Inpaint a batch with every method, blend it back every way and score each picture.

    Returns one row per (picture, method/blend) and the composites per method/blend. ``truth``: the
    pictures are the ground truth of the masked region (held-out pictures), so the fill is scored.
    """
    from ..metrics.image import seam_error
    from ..pipelines.inpaint import inpaint

    rows, composites = [], {}
    for method in methods:
        raw = inpaint(model, images, masks, list(prompts), method=method, guidance=guidance, steps=steps,
                      seed=list(seeds), composite=False, show_progress=False).images.float().cpu()
        for mode in blends:
            comp = torch.cat([blend(images[i:i + 1], raw[i:i + 1], masks[i:i + 1], method=mode)
                              for i in range(images.shape[0])])
            comp = (comp.clamp(0, 1) * 255).round() / 255  # scored as saved (8-bit)
            if truth:
                scores = {k: v.tolist() for k, v in coherence_scores(comp, images, masks).items()}
            else:
                scores = {"seam_added": (seam_error(comp, masks) - seam_error(images, masks)).tolist()}
            scores["evalenc_inside"] = [evaluator.scores(comp[i:i + 1], masks[i:i + 1], prompts[i])["evalenc_inside"]
                                        for i in range(comp.shape[0])] if evaluator is not None else [None] * len(comp)
            key = f"{method}/{mode}"
            composites[key] = comp
            rows += [{"method": key, "picture": i, **{k: v[i] for k, v in scores.items()}} for i in range(len(comp))]
    return rows, composites


def _kid_values(feats: np.ndarray, real: np.ndarray) -> float:
    return float(mmd2_unbiased(torch.from_numpy(feats).double(), torch.from_numpy(real).double(), polynomial_kernel()))


def _paired_kid(fa: np.ndarray, fb: np.ndarray, real: np.ndarray, n_boot: int = 200, seed: int = 0) -> list[float]:
    """95 % interval of KID(a) − KID(b), resampling the same pictures for both (percentile bootstrap; repeated
    draws are dropped, as the unbiased MMD² estimator assumes distinct samples)."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        i = rng.choice(len(fa), len(fa), replace=True)
        i = np.unique(i) if len(np.unique(i)) > 2 else np.arange(len(fa))
        diffs.append(_kid_values(fa[i], real) - _kid_values(fb[i], real))
    return [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))]


def summarize_rows(rows: list[dict], features: dict[str, np.ndarray] | None = None,
                   real: np.ndarray | None = None, reference: str = REFERENCE) -> dict[str, Any]:
    """Per method/blend: mean and 95 % CI of each measure, the paired difference to ``reference``, and
    KID / Fréchet distance with the paired KID difference when features are given."""
    out: dict[str, Any] = {}
    keys = list(dict.fromkeys(r["method"] for r in rows))
    by = {k: sorted((r for r in rows if r["method"] == k), key=lambda r: r["picture"]) for k in keys}
    for k in keys:
        entry: dict[str, Any] = {"n": len(by[k])}
        for m in MEASURES:
            vals = [r.get(m) for r in by[k]]
            if not vals or any(v is None for v in vals):
                continue
            ci = bootstrap_ci(vals)
            entry[m] = {"mean": ci.mean, "ci95": [ci.lo, ci.hi]}
            if k != reference and reference in by:
                d = paired_bootstrap_ci(vals, [r[m] for r in by[reference]])
                entry[m]["minus_reference"] = {"mean": d.mean, "ci95": [d.lo, d.hi]}
        if features is not None and real is not None and k in features:
            entry.update(composite_distance(features[k], real))
            if k != reference and reference in features:
                entry["kid_minus_reference_ci95"] = _paired_kid(features[k], features[reference], real)
        out[k] = entry
    return out


_LABELS = {"lpips_like_fill": "LPIPS-like fill ↓", "psnr_fill": "PSNR fill (dB) ↑", "ssim_fill": "SSIM fill ↑",
           "seam_added": "seam added ↓", "evalenc_inside": "prompt match ↑"}


def _fmt(e: dict | None, signed: bool = False) -> str:
    if not e:
        return "n/a"
    f = "{:+.3g}" if signed else "{:.3g}"
    return f"{f.format(e['mean'])} [{f.format(e['ci95'][0])}, {f.format(e['ci95'][1])}]"


def markdown_table(doc: dict, part: str = "heldout") -> str:
    """The measurement as a Markdown table: value and paired difference to the reference per method/blend."""
    cols = [m for m in MEASURES if any(m in e for e in doc[part].values())]
    kid = part == "heldout" and any("kid" in e for e in doc[part].values())
    head = ["method/blend", "n"] + [_LABELS[c] for c in cols] + (["KID ↓ (Δ paired)"] if kid else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = doc[part].get(doc["reference"], {})
    for k, e in doc[part].items():
        cells = [k + (" (reference)" if k == doc["reference"] else ""), str(e["n"])]
        for c in cols:
            d = e.get(c, {}).get("minus_reference")
            cells.append(_fmt(e.get(c)) + (f"; Δ {_fmt(d, True)}" if d else ""))
        if kid:
            extra = ""
            if "kid_minus_reference_ci95" in e:
                lo, hi = e["kid_minus_reference_ci95"]
                extra = f"; Δ {e['kid'] - ref['kid']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
            cells.append(f"{e['kid']:.4f}{extra}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _heldout(eval_dir: Path, n_real: int, seed: int = 0) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    with np.load(eval_dir / "heldout_pictures.npz") as z:
        images, ids = z["images"], [str(s) for s in z["ids"]]
    meta = {m["id"]: m for m in json.loads((eval_dir / "heldout_pictures.json").read_text())}
    order = np.random.default_rng(seed).permutation(len(ids))
    real_idx, use = order[-n_real:], order[:-n_real]
    return images[use], [ids[i] for i in use], [meta[ids[i]]["captions"][0] for i in use], images[real_idx]


def _to_tensor(arr: np.ndarray) -> Tensor:
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m condiff.experiments.coherence", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval-dir", required=True, help="folder with heldout_pictures.npz/.json")
    p.add_argument("--out", required=True)
    p.add_argument("--time-limit", type=float, default=600.0,
                   help="start no batch of held-out pictures after this many CPU seconds of inpainting")
    p.add_argument("--wall-limit", type=float, default=3600.0, help="… or after this many wall-clock seconds")
    p.add_argument("--n", type=int, default=1000, help="at most this many held-out pictures")
    p.add_argument("--n-real", type=int, default=600, help="real held-out pictures (disjoint) for KID / FD")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--task-seeds", type=int, default=2, help="seeds per thesis task")
    a = p.parse_args(argv)
    from ..models.registry import load_model
    from .architectures import Evaluator, experiment2_tasks
    from .context import EvalEncoder

    t0 = time.perf_counter()
    model = load_model("builtin", device="cpu", dtype=torch.float32).eval()
    enc = EvalEncoder.builtin("cpu")
    evaluator = Evaluator(enc.embed_images, enc.embed_texts, name=enc.name)
    images, ids, captions, real_imgs = _heldout(Path(a.eval_dir), a.n_real)
    real = enc.embed_images(_to_tensor(real_imgs)).numpy()
    size = model.image_size
    rows, feats = [], {}
    done, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
    while done < min(a.n, len(ids)) and (done == 0 or (time.process_time() - cpu0 < a.time_limit
                                                       and time.perf_counter() - wall0 < a.wall_limit)):
        sl = slice(done, min(done + a.batch, a.n, len(ids)))
        x = _to_tensor(images[sl])
        masks = centre_box(size).expand(x.shape[0], -1, -1, -1)
        r, comps = measure(model, evaluator, x, masks, captions[sl], seeds=[i for i in range(sl.start, sl.stop)],
                           truth=True, steps=a.steps)
        rows += [{**row, "picture": row["picture"] + done, "id": ids[done + row["picture"]]} for row in r]
        for k, c in comps.items():
            feats.setdefault(k, []).append(enc.embed_images(c).numpy())
        done = sl.stop
        print(f"{done} held-out pictures, {time.process_time() - cpu0:.0f} CPU s, {time.perf_counter() - wall0:.0f} s",
              flush=True)
    feats_np = {k: np.concatenate(v) for k, v in feats.items()}
    task_rows = []
    for s in range(a.task_seeds):
        for k, t in enumerate(experiment2_tasks()):
            r, _ = measure(model, evaluator, t.image, t.mask, [t.prompt], seeds=[s], truth=False, steps=a.steps)
            task_rows += [{**row, "picture": k * a.task_seeds + s, "task": t.name, "seed": s} for row in r]
    doc = {"command": "python -m condiff.experiments.coherence " + " ".join(argv or sys.argv[1:]),
           "device": "cpu", "torch_threads": torch.get_num_threads(), "steps": a.steps, "mask": "centre quarter",
           "prompt": "the picture's first caption", "n_heldout": done, "n_real": len(real), "reference": REFERENCE,
           "feature_extractor": enc.name, "wall_s": round(time.perf_counter() - t0, 1),
           "cpu_s": round(time.process_time(), 1),
           "load_average_end": [round(v, 2) for v in os.getloadavg()],
           "heldout": summarize_rows(rows, feats_np, real), "tasks": summarize_rows(task_rows),
           "rows": rows, "task_rows": task_rows}
    Path(a.out).write_text(json.dumps(doc, indent=1))
    print(f"{done} held-out pictures and {len(task_rows)} task results -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
