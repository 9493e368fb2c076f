"""How well ControlNet outputs follow their condition (thesis §3.1.3, experiment 1 §4.2.4).

:func:`evaluate_adherence` generates from held-out conditions with and without the ControlNet (same
prompts and seeds), runs each output back through the *same preprocessor*, and compares with the
condition — edge F1 for canny/lineart/softedge, scale-and-shift-invariant AbsRel for depth, mean
angular error for normals, PCK@0.1 and keypoint distance for pose. The unconditioned model is the
baseline; the held-out pictures themselves, run through the preprocessor, give the reachable ceiling
("reference"). :func:`condition_bank` makes a built world's conditions exactly as the preprocessor
makes them at inference (:func:`condiff.data.conditions.condition_maps`).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.conditions import check_condition_names, condition_maps
from ..metrics.adherence import depth_errors, edge_f1, keypoint_scores, normal_angular_error
from ..models.ldm import LatentDiffusion
from ..nn.controlnet import ControlNet
from ..pipelines.control import control
from ..pipelines.text2img import generate
from ..preprocess import get_preprocessor
from ..preprocess.pose import estimate_keypoints

__all__ = ["condition_bank", "records_for", "PRIMARY", "AdherenceReport", "score_adherence", "evaluate_adherence"]


def _record(world, i: int) -> dict:
    return {"image": world.images[i].permute(1, 2, 0).numpy(), "lineart": world.lineart[i].numpy(),
            "depth": world.depth[i].numpy(), "keypoints": world.keypoints[i].numpy(),
            "has_pose": bool(world.has_pose[i])}


def condition_bank(world, kind: str, index: Tensor | Sequence[int], workers: int = 8) -> Tensor:
    """Condition maps of the records ``index`` as uint8 [n, 3, H, W] (CPU), computed from the world's
    arrays by :func:`condiff.data.conditions.condition_maps` (OpenCV releases the GIL: threads)."""
    (kind,) = check_condition_names([kind])
    idx = [int(i) for i in (index.tolist() if isinstance(index, Tensor) else index)]
    if not idx:
        raise ValueError(f"no records to make {kind!r} conditions for")

    def one(i: int) -> np.ndarray:
        return condition_maps(_record(world, i), [kind])[kind]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        maps = list(pool.map(one, idx))
    return torch.from_numpy(np.stack(maps)).permute(0, 3, 1, 2).contiguous()


def records_for(world, kind: str, split: str) -> Tensor:
    """Indices of the ``split`` ("train"/"eval") records a ``kind`` ControlNet uses (pose: figures only)."""
    keep = world.is_eval.clone() if split == "eval" else ~world.is_eval
    if kind == "pose":
        keep &= world.has_pose
    return keep.nonzero().squeeze(1)


#: kind -> (primary metric, whether higher is better)
PRIMARY = {
    "canny": ("edge F1", True), "lineart": ("edge F1", True), "softedge": ("edge F1", True),
    "depth": ("depth AbsRel", False), "normal": ("normal mean angle (deg)", False), "pose": ("pose PCK@0.1", True),
}


@dataclass
class AdherenceReport:
    """Per-image scores of the ControlNet outputs, the unconditioned baseline and the reference
    (the held-out pictures themselves through the preprocessor), per metric."""

    kind: str
    n: int
    scores: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # metric -> source -> [n]

    @property
    def primary(self) -> str:
        return PRIMARY[self.kind][0]

    @property
    def higher_is_better(self) -> bool:
        return PRIMARY[self.kind][1]

    def mean(self, metric: str, source: str) -> float:
        v = self.scores[metric][source].double()
        v = v[~torch.isnan(v)]
        return float(v.mean()) if len(v) else math.nan

    def summary(self) -> dict[str, float]:
        """Flat dict for a model card: ``"<metric> (<source>)": mean``."""
        out: dict[str, float] = {"held-out conditions": self.n}
        for metric, by_source in self.scores.items():
            for source in by_source:
                out[f"{metric} ({source})"] = round(self.mean(metric, source), 4)
        mean, lo, hi = self.paired_difference()
        out[f"{self.primary}: controlnet − baseline (paired, 95 % CI)"] = f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        return out

    def paired_difference(self, metric: str | None = None) -> tuple[float, float, float]:
        """ControlNet − baseline on the same conditions, prompts and seeds: (mean, 95 % CI low, high),
        bootstrapped over the conditions where both are defined."""
        from ..metrics.bootstrap import paired_bootstrap_ci

        by_source = self.scores[metric or self.primary]
        a, b = by_source["controlnet"].double(), by_source["baseline"].double()
        both = ~(torch.isnan(a) | torch.isnan(b))
        if not both.any():
            return (math.nan, math.nan, math.nan)
        ci = paired_bootstrap_ci(a[both], b[both], seed=0)
        return (float(ci.mean), float(ci.lo), float(ci.hi))

    def improved(self) -> bool:
        """Whether the ControlNet beats the unconditioned baseline on the primary metric."""
        c, b = self.mean(self.primary, "controlnet"), self.mean(self.primary, "baseline")
        return c > b if self.higher_is_better else c < b


def _u8(images: Tensor) -> list[np.ndarray]:
    x = images.detach().float().cpu().clamp(0, 1)
    return [a for a in (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()]


def score_adherence(kind: str, outputs: Tensor, conditions: Tensor, *, keypoints: Tensor | None = None,
                    masks: Tensor | None = None) -> dict[str, Tensor]:
    """Per-image agreement of ``outputs`` [N, 3, H, W] (in [0, 1]) with ``conditions`` (same layout)
    after running the outputs through the ``kind`` preprocessor; see :data:`PRIMARY`.

    ``keypoints`` [N, 18, 3] (x, y, visible) are the pose targets (required for pose); ``masks``
    [N, H, W] restrict depth/normal errors (e.g. the foreground). Undefined values are NaN.
    """
    (kind,) = check_condition_names([kind])
    if outputs.shape != conditions.shape or outputs.ndim != 4:
        raise ValueError(f"outputs {tuple(outputs.shape)} and conditions {tuple(conditions.shape)} must both be [N, 3, H, W]")
    n = outputs.shape[0]
    conditions = conditions.detach().float().cpu()
    if kind == "pose":
        if keypoints is None:
            raise ValueError("pose adherence needs the target keypoints [N, 18, 3]")
        pred = torch.full((n, 18, 3), math.nan)
        for i, img in enumerate(_u8(outputs)):
            kp = estimate_keypoints(img)
            if kp is not None:
                pred[i] = torch.from_numpy(kp)
        target = torch.as_tensor(keypoints, dtype=torch.float32)
        vis = pred[..., 2] > 0
        s = keypoint_scores(pred[..., :2], target[..., :2], pred_visible=vis, target_visible=target[..., 2] > 0)
        return {"pose PCK@0.1": s.pck, "keypoint distance": s.mean_distance, "pose found": vis.any(1).float()}
    fn = get_preprocessor(kind)
    ext = torch.stack([torch.from_numpy(np.asarray(fn(a), np.uint8)).permute(2, 0, 1) for a in _u8(outputs)]).float() / 255
    if kind in ("canny", "lineart", "softedge"):
        return {"edge F1": edge_f1(ext[:, 0], conditions[:, 0]).f1}
    m = None if masks is None else torch.as_tensor(masks).bool()
    rows = []
    for i in range(n):
        mi = None if m is None else m[i]
        try:
            if kind == "depth":
                rows.append(float(depth_errors(ext[i, 0], conditions[i, 0], mask=mi).abs_rel[0]))
            else:
                rows.append(float(normal_angular_error(ext[i:i + 1] * 2 - 1, conditions[i:i + 1] * 2 - 1,
                                                       mask=None if mi is None else mi[None]).mean_deg[0]))
        except ValueError:  # no valid pixel in this condition (e.g. an empty depth map)
            rows.append(math.nan)
    return {PRIMARY[kind][0]: torch.tensor(rows)}


@torch.no_grad()
def evaluate_adherence(
    model: LatentDiffusion,
    controlnet: ControlNet,
    kind: str,
    conditions: Tensor,
    prompts: Sequence[str],
    *,
    keypoints: Tensor | None = None,
    masks: Tensor | None = None,
    references: Tensor | None = None,
    scale: float = 1.0,
    steps: int = 20,
    guidance: float | None = None,
    sampler: str = "dpmpp_2m",
    seed: int = 0,
    batch_size: int = 16,
) -> AdherenceReport:
    """Generate from held-out ``conditions`` ([N, 3, H, W], uint8 or [0, 1]) with and without the
    ControlNet (same prompts, image i with seed ``seed + i``) and score both (:func:`score_adherence`).

    ``references`` ([N, 3, H, W] pictures the conditions were made from) add the ceiling: the same
    preprocessor on the true pictures.
    """
    conditions = conditions.float() / 255 if conditions.dtype == torch.uint8 else conditions.float()
    n = conditions.shape[0]
    if len(prompts) != n or n == 0:
        raise ValueError(f"need one prompt per condition: {len(prompts)} prompts for {n} conditions")
    with_cn, without = [], []
    common = dict(steps=steps, guidance=guidance, sampler=sampler, show_progress=False)
    for i in range(0, n, batch_size):
        p = list(prompts[i:i + batch_size])
        seeds = list(range(seed + i, seed + i + len(p)))
        with_cn.append(control(model, conditions[i:i + batch_size], p, kinds=[kind], scales=scale, preprocess=False,
                               controlnets={kind: controlnet}, seed=seeds, **common).images)
        without.append(generate(model, p, seed=seeds, batch_size=len(p), **common).images)
    kw = dict(keypoints=keypoints, masks=masks)
    report = AdherenceReport(kind, n)
    sources = {"controlnet": torch.cat(with_cn), "baseline": torch.cat(without)}
    if references is not None:
        sources["reference"] = references.float() / 255 if references.dtype == torch.uint8 else references.float()
    for source, images in sources.items():
        for metric, values in score_adherence(kind, images, conditions, **kw).items():
            report.scores.setdefault(metric, {})[source] = values
    return report


# ============================================================================ the job stage


def scale_sweep(model: LatentDiffusion, world, controlnets: dict[str, ControlNet], scales: Sequence[float],
                n: int = 32, steps: int = 20, batch_size: int = 16) -> list[dict]:
    """Held-out adherence (:func:`evaluate_adherence`) of each ControlNet of ``controlnets`` (kind -> network) at
    every conditioning scale of ``scales``, on the first ``n`` held-out records of its kind; one flat row
    (:meth:`AdherenceReport.summary`) per (kind, scale)."""
    rows = []
    for kind, net in controlnets.items():
        held = records_for(world, kind, "eval")[:n]
        cond = condition_bank(world, kind, held)
        for scale in scales:
            rep = evaluate_adherence(model, net, kind, cond, [world.captions[i][0] for i in held.tolist()],
                                     keypoints=world.keypoints[held], masks=world.depth[held] > 0,
                                     references=world.images[held], scale=float(scale), steps=steps,
                                     batch_size=batch_size)
            rows.append({"kind": kind, "scale": float(scale),
                         **{k: round(float(v), 4) if isinstance(v, (int, float)) else v
                            for k, v in rep.summary().items()}})
    return rows
