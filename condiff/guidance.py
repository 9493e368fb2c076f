"""Guidance as ``Denoiser -> Denoiser`` wrappers: classifier-free and classifier guidance (thesis 3.1.1).

Both rules are written in the σ-space denoiser form of DESIGN.md §3, where the score of the
noised density and the denoiser are tied by Tweedie's formula

    ∇_x log p_σ(x) = (D(x, σ) − x) / σ².                                         (T)

**Classifier-free guidance** (Ho & Salimans 2022; thesis eq. 3.8)

    ∇ log p̃_σ(x | y) = (1 − γ) ∇ log p_σ(x) + γ ∇ log p_σ(x | y).

Substituting (T) for both scores, the "− x" terms add up to (1 − γ + γ)(−x) = −x, so the guided
score is again of the form (D̃ − x)/σ² with

    D̃(x, σ) = D(x, σ | ∅) + γ · (D(x, σ | y) − D(x, σ | ∅)).                     (CFG)

γ = 0 gives the unconditional denoiser, γ = 1 the conditional one and γ > 1 extrapolates.
For an ε-model, D = x − σ ε̂ (thesis eq. 2.13 in σ form), and inserting it in (CFG) gives
D̃ = x − σ (ε̂(x | ∅) + γ (ε̂(x | y) − ε̂(x | ∅))): exactly thesis eq. 3.9 with s = γ. The same
holds for x0-, v- and EDM-parameterised networks, because for all of them D = c_skip·x + c_out·F
with coefficients that do not depend on the conditioning, so a linear combination of the
outputs F is the same linear combination of the denoisers. (CFG) is therefore the one rule for
every prediction type, applied after preconditioning.

A *negative prompt* is the conditioning used for the "∅" branch: instead of the empty prompt the
model is pushed away from ``negative``. Fields that describe the image rather than the prompt
(``concat`` channels of an inpainting model, ControlNet ``control`` residuals, ``extra`` keys)
are copied from the positive conditioning when the negative one leaves them unset, so both
branches see the same masked image / control hint, as Stable Diffusion pipelines do.

**Classifier guidance** (Dhariwal & Nichol 2021; thesis eq. 3.4)

    ∇ log p̃_σ(x | y) = ∇ log p_σ(x) + γ ∇_x log p_σ(y | x).

Writing the left side as (D̃ − x)/σ² and the first term as (D − x)/σ² by (T) and solving for D̃:

    D̃(x, σ) = D(x, σ) + γ σ² ∇_x log p_σ(y | x).                                (CG)

The classifier must be a *noisy* classifier: it sees the noised state x = x0 + σ ε (VE view) and
the noise level σ. With γ = 1 and the exact p_σ(y | x), Bayes' rule (thesis eq. 3.3) makes D̃ the
exact conditional denoiser E[x0 | x, y].

Guidance interval: both wrappers can restrict guidance to σ ∈ [σ_lo, σ_hi] (Kynkäänniemi et al.
2024 show that guiding only at mid noise levels keeps diversity). Outside the interval the plain
conditional denoiser is used (CFG: γ = 1, one network call on the CPU; on an accelerator both
branches run and a device-side select picks the conditional one, so the test never waits for the
device; CG: the inner denoiser).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .denoisers import Cond, Denoiser, DenoiserWrapper, append_dims, sigma_batch

__all__ = [
    "cfg_combine",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "NoisyClassifier",
    "sigma_in_interval",
]

NoisyClassifier = Callable[[Tensor, Tensor], Tensor]
"""``classifier(x, sigma) -> [B, K]`` logits/log-probabilities of the K classes for the noised
state x (VE view, x = x0 + σ ε) at noise level sigma [B]; or ``-> [B]``, log p_σ(y | x) of the
class the callable itself targets (e.g. a CLIP-style score)."""


def cfg_combine(d_uncond: Tensor, d_cond: Tensor, scale: float | Tensor) -> Tensor:
    """D̃ = D_∅ + γ (D_y − D_∅): thesis eq. 3.8 in denoiser form (eq. 3.9 for ε-models, see module doc)."""
    if isinstance(scale, Tensor):
        scale = append_dims(scale.to(d_cond.dtype), d_cond.ndim)
    return d_uncond + scale * (d_cond - d_uncond)


def _check_scale(scale: float, name: str) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{name} must be a finite number, got {scale!r}")
    return float(scale)


def _check_interval(interval: tuple[float, float] | None) -> tuple[float, float] | None:
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"sigma_interval must be a pair (sigma_lo, sigma_hi), got {interval!r}") from None
    if not (0 <= lo <= hi) or math.isnan(hi):
        raise ValueError(f"sigma_interval needs 0 ≤ sigma_lo ≤ sigma_hi, got ({lo}, {hi})")
    return lo, hi


def sigma_in_interval(sigma: Tensor, interval: tuple[float, float] | None) -> Tensor:
    """Boolean [B]: which samples' σ lies in the closed guidance interval (all when None)."""
    if interval is None:
        return torch.ones_like(sigma, dtype=torch.bool)
    lo, hi = interval
    return (sigma >= lo) & (sigma <= hi)


def _batch_cond(cond: Cond, batch: int) -> Cond:
    """``cond`` with every tensor field of batch size 1 repeated to ``batch`` rows."""
    n = cond.batch_size()
    if n is None or n == batch:
        return cond
    if n != 1:
        raise ValueError(f"the negative/unconditional Cond has batch size {n}; give 1 row or {batch} rows")
    return cond.select(torch.zeros(batch, dtype=torch.long))


def _with_shared_fields(uncond: Cond, cond: Cond) -> Cond:
    """Copy image-side fields (concat, control, extra) that ``uncond`` leaves unset from ``cond``."""
    extra = {**cond.extra, **uncond.extra}
    return uncond.replace(
        concat=uncond.concat if uncond.concat is not None else cond.concat,
        control=uncond.control if uncond.control is not None else cond.control,
        extra=extra,
    )


class ClassifierFreeGuidance(DenoiserWrapper):
    """D̃ = D(·|negative) + γ (D(·|cond) − D(·|negative)) (thesis eq. 3.8/3.9 in denoiser form).

    Args:
        inner: a denoiser trained with conditioning dropout (knows both branches).
        scale: γ. 0 → unconditional, 1 → conditional (a single network call), > 1 → extrapolated.
        uncond: the conditioning of the "∅" branch: the empty-prompt embedding, a null class
            label, or a **negative prompt**. One row is broadcast to the batch.
        sigma_interval: guide only for σ_lo ≤ σ ≤ σ_hi; elsewhere return the conditional denoiser.
        batched: evaluate both branches in one network call on a doubled batch (Cond.cat);
            False makes two calls (half the peak memory, identical result).
    """

    def __init__(
        self,
        inner: Denoiser,
        scale: float,
        uncond: Cond,
        *,
        sigma_interval: tuple[float, float] | None = None,
        batched: bool = True,
    ):
        super().__init__(inner)
        self.scale = _check_scale(scale, "guidance scale γ")
        if not isinstance(uncond, Cond):
            raise ValueError(f"uncond must be a condiff.denoisers.Cond (e.g. the empty prompt), got {type(uncond).__name__}")
        self.uncond = uncond
        self.sigma_interval = _check_interval(sigma_interval)
        self.batched = bool(batched)

    def _branches(self, x: Tensor, sigma: Tensor, cond: Cond) -> tuple[Tensor, Tensor]:
        uncond = _with_shared_fields(_batch_cond(self.uncond, x.shape[0]), cond)
        if not self.batched:
            return self.inner(x, sigma, uncond), self.inner(x, sigma, cond)
        try:
            both = Cond.cat([uncond, cond])
        except ValueError as err:
            raise ValueError(
                f"cannot batch the negative and positive conditioning ({err}); make both set the same "
                "fields (e.g. both with or without context_mask) or pass batched=False"
            ) from None
        out = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), both)
        return out[: x.shape[0]], out[x.shape[0]:]

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Cond | None = None) -> Tensor:
        if cond is None:
            raise ValueError("classifier-free guidance needs the positive conditioning: pass cond=Cond(...)")
        sigma = sigma_batch(sigma, x)
        if self.scale == 1.0:
            return self.inner(x, sigma, cond)
        if self.sigma_interval is None:
            d_uncond, d_cond = self._branches(x, sigma, cond)
            return cfg_combine(d_uncond, d_cond, self.scale)
        active = sigma_in_interval(sigma, self.sigma_interval)
        if sigma.device.type != "cpu":
            # On an accelerator the interval test stays on the device (no host synchronisation):
            # both branches run and rows outside the interval take the conditional denoiser.
            d_uncond, d_cond = self._branches(x, sigma, cond)
            guided = cfg_combine(d_uncond, d_cond, self.scale)
            return torch.where(append_dims(active, x.ndim), guided, d_cond)
        if not bool(active.any()):
            return self.inner(x, sigma, cond)
        if bool(active.all()):
            d_uncond, d_cond = self._branches(x, sigma, cond)
            return cfg_combine(d_uncond, d_cond, self.scale)
        # Mixed batch (per-sample σ): guide the rows inside the interval only.
        out = self.inner(x, sigma, cond)
        idx = active.nonzero().squeeze(1)
        d_uncond, d_cond = self._branches(x[idx], sigma[idx], cond.select(idx))
        out = out.clone()
        out[idx] = cfg_combine(d_uncond, d_cond, self.scale)
        return out


class ClassifierGuidance(DenoiserWrapper):
    """D̃ = D + γ σ² ∇_x log p_σ(y | x) (thesis eq. 3.4 in denoiser form, derived in the module doc).

    Args:
        inner: the (usually unconditional) denoiser.
        classifier: a noisy classifier, see :data:`NoisyClassifier`.
        scale: γ (0 → no guidance; 1 with the exact classifier → the exact conditional denoiser).
        labels: the target classes y [B] (or one label for all); when None, ``cond.class_labels``.
        pass_labels: also give the labels to ``inner`` (a class-conditional model guided by a
            classifier, as Dhariwal & Nichol do). By default labels taken from ``cond`` are
            removed before calling ``inner``, so an unconditional model stays unconditional.
        sigma_interval: guide only for σ_lo ≤ σ ≤ σ_hi.

    The gradient is taken in float32 or wider, also under a surrounding ``torch.no_grad`` or
    ``torch.inference_mode`` (pipelines sample under those).
    """

    def __init__(
        self,
        inner: Denoiser,
        classifier: NoisyClassifier,
        scale: float,
        *,
        labels: Tensor | int | None = None,
        pass_labels: bool = False,
        sigma_interval: tuple[float, float] | None = None,
    ):
        super().__init__(inner)
        if not callable(classifier):
            raise ValueError("classifier must be a callable classifier(x, sigma) -> [B, K] log-probs or [B]")
        self.classifier = classifier
        self.scale = _check_scale(scale, "classifier guidance scale γ")
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        self.pass_labels = bool(pass_labels)
        self.sigma_interval = _check_interval(sigma_interval)

    def _labels(self, cond: Cond | None, batch: int, device) -> Tensor | None:
        labels = self.labels
        if labels is None and cond is not None and cond.class_labels is not None:
            labels = cond.class_labels
            if labels.is_floating_point():
                raise ValueError("classifier guidance needs integer class labels, got float embeddings")
        if labels is None:
            return None
        labels = labels.to(device).long().reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(batch)
        if labels.numel() != batch:
            raise ValueError(f"got {labels.numel()} class labels for a batch of {batch}")
        return labels

    def log_prob_grad(self, x: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
        """∇_x log p_σ(y | x) for each sample (samples are independent, so one backward of the sum)."""
        work_dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.inference_mode(False), torch.enable_grad():
            xg = x.detach().to(work_dtype).clone().requires_grad_(True)
            out = self.classifier(xg, sigma.to(work_dtype))
            if out.ndim == 2:
                if labels is None:
                    raise ValueError(
                        "the classifier returns per-class scores; give the target classes via "
                        "labels=... or cond.class_labels"
                    )
                if out.shape[0] != x.shape[0]:
                    raise ValueError(f"classifier returned {out.shape[0]} rows for a batch of {x.shape[0]}")
                if bool((labels < 0).any()) or bool((labels >= out.shape[1]).any()):
                    raise ValueError(f"class labels must lie in [0, {out.shape[1] - 1}] for this classifier")
                logp = torch.log_softmax(out, dim=1).gather(1, labels[:, None]).squeeze(1)
            elif out.ndim == 1 and out.shape[0] == x.shape[0]:
                logp = out
            else:
                raise ValueError(f"classifier must return [B, K] or [B], got shape {tuple(out.shape)}")
            (grad,) = torch.autograd.grad(logp.sum(), xg)
        return grad.detach().to(x.dtype)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Cond | None = None) -> Tensor:
        sigma = sigma_batch(sigma, x)
        labels = self._labels(cond, x.shape[0], x.device)
        inner_cond = cond
        if cond is not None and self.labels is None and not self.pass_labels:
            inner_cond = cond.replace(class_labels=None)
        out = self.inner(x, sigma, inner_cond)
        if self.scale == 0.0:
            return out
        active = sigma_in_interval(sigma, self.sigma_interval) & (sigma > 0)
        if sigma.device.type == "cpu" and not bool(active.any()):
            return out
        grad = self.log_prob_grad(x, sigma, labels)
        weight = append_dims(torch.where(active, self.scale * sigma**2, torch.zeros_like(sigma)), x.ndim)
        return out + weight.to(out.dtype) * grad
