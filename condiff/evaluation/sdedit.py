"""SDEdit faithfulness vs. realism over the strength t0 on held-out sketches (thesis §3.1.2, Fig. 4.2).

Inputs are the held-out pictures' line art drawn black on white (a built world's ``lineart`` maps, the
sketches of experiment 1), the prompt is the picture's caption, one seed per picture (the same at every
t0), 20 DPM++ steps at the model's default guidance. For every t0 in :data:`STRENGTHS`: SSIM and RMSE of
the output to the input sketch (faithfulness), the evalenc similarity to the caption (realism /
adherence) and to the real picture, each with a bootstrap 95 % CI, plus the paired change of SSIM from
each t0 to the next (the faithfulness curve falls monotonically where every interval lies below zero).
"""

from __future__ import annotations

import torch

from ..metrics.bootstrap import bootstrap_ci
from ..metrics.image import ssim
from ..models.ldm import LatentDiffusion
from ..nn.image_encoder import ImageEncoder
from ..pipelines.text2img import sdedit
from .adherence import eval_order, features

__all__ = ["STRENGTHS", "sdedit_sweep"]

#: the SDEdit strengths t0 of the sweep (0 = the input unchanged, 1 = pure text-to-image)
STRENGTHS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _ci(values) -> str:
    c = bootstrap_ci(values, seed=0)
    return f"{c.mean:.4f} [{c.lo:.4f}, {c.hi:.4f}]"


def sdedit_sweep(model: LatentDiffusion, enc: ImageEncoder, ev, n: int = 32, batch: int = 16,
                 strengths: tuple[float, ...] = STRENGTHS) -> dict:
    """The sweep on the first ``n`` held-out pictures of ``ev`` (:func:`~condiff.evaluation.adherence.eval_order`);
    picture i gets the seed 30 000 + i at every strength."""
    idx = eval_order(ev)[:n]
    sketches = (255 - ev.lineart[idx].float())[:, None].expand(-1, 3, -1, -1) / 255
    prompts = [ev.captions[i][0] for i in idx]
    txt = model.text_encoder.pooled(prompts).float().cpu()
    real_emb = features(enc, ev.images[idx].float() / 255)
    report: dict = {"pictures": len(idx), "input": "held-out line art, black on white", "per_strength": {}}
    ssims = []
    for s in strengths:
        out = torch.cat([sdedit(model, sketches[i:i + batch], prompts[i:i + batch], strength=s, steps=20,
                                seed=list(range(30_000 + i, 30_000 + min(i + batch, len(idx)))),
                                show_progress=False).images for i in range(0, len(idx), batch)]).float().cpu()
        sim = torch.stack([ssim(out[i:i + 1], sketches[i:i + 1]).reshape(()) for i in range(len(idx))])
        emb = features(enc, out)
        ssims.append(sim)
        report["per_strength"][f"t0={s:g}"] = {
            "SSIM to the sketch": _ci(sim), "RMSE to the sketch": _ci(((out - sketches) ** 2).flatten(1).mean(1).sqrt()),
            "evalenc similarity to the caption": _ci((emb * txt).sum(1)),
            "evalenc similarity to the real picture": _ci((emb * real_emb).sum(1))}
    report["SSIM change to the next t0 (paired)"] = {
        f"{strengths[k]:g} -> {strengths[k + 1]:g}": _ci(ssims[k + 1] - ssims[k]) for k in range(len(strengths) - 1)}
    return report
