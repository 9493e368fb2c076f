"""What every experiment shares: the run context, the evaluation encoder, results and their statistics.

* :class:`ExperimentContext` — the model under test, the device, the evaluation encoder (or None:
  the metrics that need it are then skipped and the report says so), ControlNets given by the
  caller, whether personalization may train, and where caches live.
* :class:`EvalEncoder` — condiff-evalenc (:mod:`condiff.nn.image_encoder`, "LiT vs. MiniLM") as two
  embedding functions: images in [0, 1] and prompts into one 384-d space. It gives the
  CLIP-style prompt score ``100·max(cos, 0)`` (:func:`condiff.metrics.clip_score`, Hessel et al.
  2021 with torchmetrics' ×100 scaling) and image–image similarities (CLIP-I/DINO-style subject
  fidelity of DreamBooth, Ruiz et al. 2023, §4.1).
* :class:`ExperimentResult`, :class:`Table`, :class:`Figure` — what an experiment hands to the
  report: figures (PIL images), tables, a nested ``metrics`` dict of *deterministic* numbers (same
  seed and device → bit-identical) and ``measurements`` (wall time, memory), which are not.
* :func:`summarize` — mean with a 95 % percentile-bootstrap interval
  (:func:`condiff.metrics.bootstrap_ci`, fixed resampling seed, so the interval is reproducible).
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..metrics.bootstrap import bootstrap_ci
from ..nn.image_encoder import EVALENC_NAME

__all__ = [
    "EVALENC_NAME", "cell_timer", "EvalEncoder", "ExperimentContext", "ExperimentResult", "Figure", "Table",
    "summarize", "fmt_summary", "as_unit_batch", "to_model_size",
]


# --------------------------------------------------------------------------- statistics


def summarize(values: Sequence[float] | Tensor, *, seed: int = 0, digits: int = 6) -> dict[str, Any]:
    """``{"mean", "ci95": [lo, hi] | None, "n"}`` of per-sample values (bootstrap 95 % CI, ≥ 2 finite values).

    Non-finite values (e.g. PSNR of identical images) are dropped and counted in ``"dropped"``;
    when every value is +inf the mean is +inf (exact), written "inf" in results.json.
    """
    vals = [float(v) for v in (values.flatten().tolist() if isinstance(values, Tensor) else values)]
    finite = [v for v in vals if math.isfinite(v)]
    out: dict[str, Any] = {"mean": None, "ci95": None, "n": len(finite)}
    if len(finite) < len(vals):
        out["dropped"] = len(vals) - len(finite)
    if not finite:
        if vals and all(v == math.inf for v in vals):  # e.g. PSNR of pixel-exact outputs: exact, not missing
            out.update(mean=math.inf, n=len(vals), dropped=0)
        return out
    if len(finite) == 1:
        out["mean"] = round(finite[0], digits)
        return out
    ci = bootstrap_ci(finite, seed=seed)
    out["mean"] = round(ci.mean, digits)
    out["ci95"] = [round(ci.lo, digits), round(ci.hi, digits)]
    return out


def fmt_summary(s: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``"0.512 [0.48, 0.55]"`` (or ``"n/a"``) for a :func:`summarize` dict."""
    if not s or s.get("mean") is None:
        return "n/a"
    if s["mean"] in (math.inf, "inf"):
        return "∞ (exact)"
    m = f"{s['mean']:.{digits}g}"
    if s.get("ci95"):
        lo, hi = s["ci95"]
        return f"{m} [{lo:.{digits}g}, {hi:.{digits}g}]"
    return m


# --------------------------------------------------------------------------- results


@dataclass
class Figure:
    """A picture of the report: an image grid or a plot (PIL image), with the thesis figure it mirrors."""

    name: str
    title: str
    image: Image.Image
    caption: str = ""
    kind: str = "grid"  # "grid" | "plot" | "image"


@dataclass
class Table:
    """Rows of cells (numbers, strings or :func:`summarize` dicts) under named columns.

    ``feature_extractor`` names the embedding network behind any learned-feature column; the report
    prints it under every table that has one.
    """

    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    feature_extractor: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "columns": list(self.columns), "rows": self.rows,
                "feature_extractor": self.feature_extractor, "notes": list(self.notes)}


@dataclass
class ExperimentResult:
    """Everything one experiment produced (see the module doc for metrics vs. measurements)."""

    name: str
    title: str
    config: dict[str, Any]
    seeds: list[int] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    measurements: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    headlines: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def skip(self, what: str, why: str) -> None:
        """Record a part that did not run, and why (shown in the report and results.json)."""
        self.skipped.append(f"{what}: {why}")


# --------------------------------------------------------------------------- timing


@contextmanager
def cell_timer(timings: dict, key: str, announce: bool = False):
    """Record a block's wall-clock and process CPU seconds as ``timings[key] = {"wall_s", "cpu_s"}``.

    On a shared machine the wall time depends on the other jobs; the CPU time (all threads of this
    process) does much less, and with one torch thread it is what the block takes on an idle core.
    ``announce``: print one line per finished block on stderr (the quiet mode's sign of progress).
    """
    w, c = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        timings[key] = {"wall_s": round(time.perf_counter() - w, 2), "cpu_s": round(time.process_time() - c, 2)}
        if announce:
            print(f"done: {key} ({timings[key]['wall_s']:.1f} s)", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- evaluation encoder


class EvalEncoder:
    """Image and text embeddings in one space (condiff-evalenc vs. MiniLM by default).

    ``image_encoder(images [B, 3, S, S] in [0, 1]) -> [B, D]`` at its ``image_size`` S (inputs are
    resized with antialiasing); ``text_encoder(prompts) -> [B, D]``.
    """

    def __init__(self, image_encoder: Callable[[Tensor], Tensor], text_encoder: Callable[[list[str]], Tensor], *,
                 name: str = EVALENC_NAME, image_size: int = 128, device: str | torch.device = "cpu",
                 batch_size: int = 32):
        self.image_encoder, self.text_encoder, self.name = image_encoder, text_encoder, name
        self.image_size, self.device, self.batch_size = int(image_size), torch.device(device), batch_size

    @classmethod
    def builtin(cls, device: str | torch.device = "cpu") -> "EvalEncoder":
        """condiff-evalenc from condiff's weights + the frozen MiniLM sentence embedding (ValueError if absent)."""
        from ..models.registry import builtin_text_encoder
        from ..models.unclip import load_evalenc

        enc = load_evalenc(device=device)
        text = builtin_text_encoder(24).to(device)
        return cls(enc, text.pooled, image_size=enc.config.image_size, device=device)

    @torch.no_grad()
    def embed_images(self, images: Tensor) -> Tensor:
        """[B, D] float32 on CPU, L2-normalised."""
        x = as_unit_batch(images)
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            chunk = x[i:i + self.batch_size]
            if chunk.shape[-1] != self.image_size or chunk.shape[-2] != self.image_size:
                chunk = F.interpolate(chunk, size=(self.image_size, self.image_size), mode="bilinear",
                                      align_corners=False, antialias=chunk.shape[-1] > self.image_size).clamp(0, 1)
            out.append(self.image_encoder(chunk.to(self.device)).float().cpu())
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str]) -> Tensor:
        return F.normalize(self.text_encoder(list(prompts)).float().cpu(), dim=-1)

    def prompt_scores(self, images: Tensor, prompts: str | Sequence[str]) -> Tensor:
        """CLIP-style score 100·max(cos(image, prompt), 0) per image [B]."""
        from ..metrics.clip_score import clip_score

        emb = self.embed_images(images)
        prompts = [prompts] * emb.shape[0] if isinstance(prompts, str) else list(prompts)
        return clip_score(emb, self.embed_texts(prompts))

    def image_similarity(self, images: Tensor, references: Tensor) -> Tensor:
        """Mean over the references of 100·cos(image, reference), per image [B]."""
        a, b = self.embed_images(images), self.embed_images(references)
        return 100.0 * (a @ b.t()).mean(1)


# --------------------------------------------------------------------------- context


@dataclass
class ExperimentContext:
    """The run-wide state an experiment needs (see the module doc)."""

    model: Any
    device: torch.device = torch.device("cpu")
    evalenc: EvalEncoder | None = None
    controlnets: dict[str, Any] = field(default_factory=dict)
    train: bool = False
    cache_dir: Path | None = None
    show_progress: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def evalenc_name(self) -> str | None:
        return self.evalenc.name if self.evalenc is not None else None


# --------------------------------------------------------------------------- images


def as_unit_batch(x: Tensor | Any) -> Tensor:
    """An image tensor [B, 3, H, W] (or [3, H, W]; uint8 or float in [0, 1]) or an H×W×3 uint8 array → float [B, 3, H, W]."""
    t = torch.as_tensor(x)
    if t.ndim == 3 and t.shape[-1] == 3 and t.shape[0] != 3:
        t = t.permute(2, 0, 1)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W] in [0, 1], got shape {tuple(t.shape)}")
    return t.float() / 255 if t.dtype == torch.uint8 else t.float()


def to_model_size(x: Tensor, size: int) -> Tensor:
    """Resize a float image batch to size×size (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=x.shape[-1] > size).clamp(0, 1)
