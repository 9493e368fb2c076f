"""Editing with a diffusion model: SDEdit (thesis 3.1.2) and zero-shot inpainting (thesis 4.3).

Everything works in the σ view x = x0 + σ ε of DESIGN.md §3 and on any state shape
(points [B, d], pixels or latents [B, C, H, W]); for latent models the caller passes latents
and a mask at latent resolution (see :func:`condiff.compositing.resize_mask`).

**SDEdit** (Meng et al. 2022). The strength t0 ∈ [0, 1] picks how far into the sampling schedule
the edit starts: of the n steps of ``sigmas`` the last k = ⌊t0·n⌋ are run, starting from
x0 + σ_{n−k}·ε (the forward process at that level). t0 = 0 runs no step and returns the input
bit-exactly (for a latent model the pipeline must then return the *original image*, not a VAE
round trip of it); t0 = 1 starts from σ_0·ε, the very state text-to-image sampling starts from,
so the result is independent of the input. Defining t0 as a fraction of the *steps* (as
diffusers and A1111 do) rather than of SDE time makes it mean the same for every sampler and
schedule.

**Inpainting**, with the mask convention of condiff: ``mask`` = 1 where content is generated
("repaint", white in a mask image), 0 where the ``known`` data is kept.

* :class:`BlendInpaint` (latent/pixel blending; Song et al. 2021 "imputation", Avrahami et al.
  2022 "Blended latent diffusion") in denoiser form:

      D'(x, σ) = m · D(x̃, σ) + (1 − m) · x0_known.

  With x̃ = x, every sampler then keeps the known region of its state on the forward path
  x0_known + σ·ε (an Euler/DDIM step maps x − x0_known to (σ_next/σ)(x − x0_known), an ancestral
  step adds noise of the right variance), so it is "replace the known region by the noised known
  data at every step" without touching the sampler. The re-noising variant (``renoise=``) feeds
  the network x̃ = m·x + (1−m)·(x0_known + σ·z) with fresh z at each level.

  Limitation, measured in tests/test_editing.py: the network sees the known region only through
  its *noised* version, so blending samples p(x_unknown | x_known) exactly only when the two are
  independent; with correlated regions the unknown part is pulled towards the prior at high σ
  and is biased (the incoherence that RePaint's resampling reduces). For x ~ N(0, [[1, .8],
  [.8, 1]]) with x_1 = 1 known (x_2 | x_1 ~ N(0.8, 0.36)), 30 steps: blending gives
  E[x_2] ≈ 0.36 (Heun) to 0.45 (Euler ancestral); RePaint (j = 2, r = 8) gives 0.73 with
  variance 0.26: each DDPM step uses the posterior *mean* x̂0, slightly under-dispersing, and
  resampling repeats those steps.

* :func:`repaint_sample` (RePaint, Lugmayr et al. 2022): DDPM posterior steps in σ form, the
  known region replaced by a fresh forward sample x0_known + σ·z after every step, and every
  ``jump_length`` steps a jump back up by ``jump_length`` levels with forward noise
  x ← x + √(σ_hi² − σ_lo²)·z, ``resamples − 1`` times, so the unknown region can harmonise with
  the known one. It is a sampler (needs its own loop) with the sampler signature of
  :mod:`condiff.samplers.registry` plus ``mask``/``known``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .denoisers import Cond, Denoiser, DenoiserWrapper, append_dims, sigma_batch
from .noise import NoiseSource
from .samplers.registry import get_sampler, prepare_sigmas, report_step, require_noise, sigma_vector
from .schedules import check_sigmas

__all__ = [
    "sdedit_steps",
    "sdedit_start",
    "sdedit",
    "prepare_inpaint_mask",
    "BlendInpaint",
    "repaint_schedule",
    "repaint_sample",
]


# --------------------------------------------------------------------------- SDEdit


def _check_strength(strength: float) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise ValueError(f"strength t0 must be a number in [0, 1], got {strength!r}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(
            f"strength t0 = {strength} is outside [0, 1]: 0 keeps the input, 1 ignores it; pick a value in between"
        )
    return float(strength)


def sdedit_steps(n_steps: int, strength: float) -> int:
    """k = ⌊t0 · n⌋: how many of the n steps SDEdit runs (a tiny tolerance absorbs float error)."""
    strength = _check_strength(strength)
    return min(n_steps, int(math.floor(strength * n_steps + 1e-9)))


def sdedit_start(
    x0: Tensor, sigmas: Tensor, strength: float, noise: NoiseSource | Tensor
) -> tuple[Tensor, Tensor]:
    """SDEdit's truncated schedule and start state (Meng et al. 2022; thesis 3.1.2).

    Returns ``(sigmas[n−k:], x_start)`` with k = ⌊t0·n⌋ for the n steps of ``sigmas``:

    * k = 0 (t0 = 0): ``(tensor([0.]), x0)``: no step to run, the input unchanged;
    * 0 < k < n: x_start = x0 + σ_{n−k}·ε;
    * k = n (t0 = 1): x_start = σ_0·ε (the text-to-image start; independent of x0).

    ``noise`` is a :class:`NoiseSource` (one seed per sample; ε is its next draw) or a tensor ε of
    x0's shape.
    """
    check_sigmas(sigmas)
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.ndim < 1:
        raise ValueError("x0 must be a floating-point tensor of shape [B, ...]")
    n = len(sigmas) - 1
    k = sdedit_steps(n, strength)
    tail = sigmas[n - k:]
    if k == 0:
        return tail, x0.clone()
    if isinstance(noise, NoiseSource):
        eps = noise.randn_like(x0)
    elif isinstance(noise, Tensor):
        if noise.shape != x0.shape:
            raise ValueError(f"noise of shape {tuple(noise.shape)} does not match x0 of shape {tuple(x0.shape)}")
        eps = noise.to(device=x0.device, dtype=x0.dtype)
    else:
        raise ValueError("noise must be a condiff.noise.NoiseSource or a tensor shaped like x0")
    sigma_start = float(tail[0])
    if k == n:
        return tail, eps * sigma_start
    return tail, x0 + eps * sigma_start


def sdedit(
    denoiser: Denoiser,
    x0: Tensor,
    sigmas: Tensor,
    strength: float,
    *,
    sampler: str | Callable[..., Tensor] = "euler",
    cond: Cond | None = None,
    noise: NoiseSource | None = None,
    callback=None,
    **knobs,
) -> Tensor:
    """Run SDEdit with any sampler (a registry name or a sampler function).

    With no step to run (t0·n < 1) the input is returned bit-exactly, and no noise is drawn.
    """
    if noise is None:
        raise ValueError("SDEdit draws noise: pass noise=NoiseSource(seed, batch_size)")
    tail, x = sdedit_start(x0, sigmas, strength, noise)
    if len(tail) < 2:
        return x
    if isinstance(sampler, str):
        sampler = get_sampler(sampler)
    return sampler(denoiser, x, tail, cond=cond, noise=noise, callback=callback, **knobs)


# --------------------------------------------------------------------------- masks for inpainting


def _fit_batch(t: Tensor, batch: int, what: str) -> Tensor:
    """Broadcast a [b, ...] tensor to ``batch`` rows (b = 1, b = batch, or tiled when batch % b = 0,
    which is how classifier-free guidance stacks its branches)."""
    b = t.shape[0]
    if b == batch or b == 1:
        return t
    if batch % b == 0:
        return t.repeat(batch // b, *([1] * (t.ndim - 1)))
    raise ValueError(f"{what} has batch size {b}, which does not fit a batch of {batch}")


def prepare_inpaint_mask(mask: Tensor, known: Tensor, like_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Validate an inpainting mask (1 = repaint) and the known data against a state shape [B, ...].

    The mask must broadcast to the state per sample (e.g. [B|1, 1, H, W] for [B, C, H, W]), hold
    values in [0, 1] and mark something to repaint; ``known`` must have the state's per-sample shape.
    """
    if not isinstance(mask, Tensor) or not isinstance(known, Tensor):
        raise ValueError("mask and known must be tensors")
    if mask.ndim != len(like_shape) or known.ndim != len(like_shape):
        raise ValueError(
            f"mask {tuple(mask.shape)} and known {tuple(known.shape)} must have the state's "
            f"{len(like_shape)} dims [B, ...] (state shape {tuple(like_shape)})"
        )
    if tuple(known.shape[1:]) != tuple(like_shape[1:]):
        raise ValueError(f"known data of shape {tuple(known.shape)} does not match the state {tuple(like_shape)}")
    for got, want in zip(mask.shape[1:], like_shape[1:]):
        if got not in (1, want):
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not fit the state {tuple(like_shape)}; "
                "resize it to the state's resolution (condiff.compositing.resize_mask)"
            )
    mask = mask.to(known.dtype) if known.is_floating_point() else mask.float()
    if not torch.isfinite(mask).all() or float(mask.min()) < 0 or float(mask.max()) > 1:
        raise ValueError("mask values must lie in [0, 1] (1 = repaint, 0 = keep)")
    if float(mask.max()) <= 0:
        raise ValueError("the mask is empty (all 0): nothing to repaint; paint the region to change white")
    return mask, known


class BlendInpaint(DenoiserWrapper):
    """D'(x, σ) = m · D(x̃, σ) + (1 − m) · x0_known: blended (latent or pixel) inpainting.

    Args:
        inner: the denoiser of an ordinary (non-inpainting) model.
        mask: [B|1, ...] broadcastable to the state, 1 = repaint.
        known: [B|1, ...] the clean data whose unmasked part is kept.
        renoise: optional :class:`NoiseSource`; when given, the network input's known region is
            replaced by x0_known + σ·z with fresh z at each new σ (the same draw is reused for
            repeated calls at one σ, so the two branches of unbatched CFG agree).

    After sampling, :meth:`finalize` pastes the known data back so it is returned exactly.
    """

    def __init__(self, inner: Denoiser, mask: Tensor, known: Tensor, *, renoise: NoiseSource | None = None):
        super().__init__(inner)
        mask, known = prepare_inpaint_mask(mask, known, tuple(known.shape))
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("known", known, persistent=False)
        if renoise is not None and not isinstance(renoise, NoiseSource):
            raise ValueError("renoise must be a condiff.noise.NoiseSource (one seed per sample)")
        self.renoise = renoise
        self._renoise_cache: tuple[tuple[float, ...], Tensor] | None = None

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        mask = _fit_batch(self.mask, b, "mask").to(x.device, x.dtype)
        known = _fit_batch(self.known, b, "known data").to(x.device, x.dtype)
        if tuple(known.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"known data of shape {tuple(known.shape)} does not match the state {tuple(x.shape)}")
        return mask, known

    def _fresh_noise(self, x: Tensor, sigma: Tensor) -> Tensor:
        key = tuple(sorted({float(s) for s in sigma}))
        if self._renoise_cache is None or self._renoise_cache[0] != key:
            z = self.renoise.randn(x.shape[1:], device=x.device, dtype=x.dtype)
            self._renoise_cache = (key, z)
        return _fit_batch(self._renoise_cache[1], x.shape[0], "renoise source").to(x.device, x.dtype)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Cond | None = None) -> Tensor:
        sigma = sigma_batch(sigma, x)
        mask, known = self._parts(x)
        x_in = x
        if self.renoise is not None:
            s = append_dims(sigma, x.ndim)
            x_in = mask * x + (1 - mask) * (known + s * self._fresh_noise(x, sigma))
        return mask * self.inner(x_in, sigma, cond) + (1 - mask) * known

    def finalize(self, x: Tensor) -> Tensor:
        """m·x + (1−m)·x0_known: the known region exactly (where m = 0)."""
        mask, known = self._parts(x)
        return torch.where(mask > 0, mask * x + (1 - mask) * known, known)


# --------------------------------------------------------------------------- RePaint


def repaint_schedule(n_steps: int, jump_length: int, resamples: int) -> list[int]:
    """The sequence of schedule indices RePaint visits (0 = σ_0, n = σ = 0).

    +1 moves are denoising steps, −``jump_length`` moves are forward re-noising jumps. Jump points
    are aligned with the clean end (indices n, n−j, n−2j, …, never jumping back to index 0) and
    each is used ``resamples − 1`` times, so each stretch of j steps is traversed ``resamples``
    times (Lugmayr et al. 2022, Alg. 1 with their jump schedule).
    """
    for name, v in (("n_steps", n_steps), ("jump_length", jump_length), ("resamples", resamples)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer ≥ 1, got {v!r}")
    left = {i: resamples - 1 for i in range(n_steps, jump_length, -jump_length)}
    seq, i = [0], 0
    while i < n_steps:
        i += 1
        seq.append(i)
        if left.get(i, 0) > 0:
            left[i] -= 1
            i -= jump_length
            seq.append(i)
    return seq


def repaint_sample(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Cond | None = None,
    noise: NoiseSource | None = None,
    callback=None,
    mask: Tensor,
    known: Tensor,
    jump_length: int = 10,
    resamples: int = 10,
) -> Tensor:
    """RePaint (Lugmayr et al. 2022) as a sampler: ``x`` is the start state at ``sigmas[0]``.

    One denoising step σ → σ' is the DDPM posterior q(x_σ' | x_σ, x̂0) written in σ form,

        x' = x̂0 + (σ'²/σ²)(x − x̂0) + σ'/σ · √(σ² − σ'²) · z,

    after which the known region is replaced by a fresh forward sample x0_known + σ'·z'. A jump
    from σ_lo back up to σ_hi adds forward noise √(σ_hi² − σ_lo²)·z, which has the law of the
    forward re-noising steps between all the consecutive σ's in between (RePaint's q(x_t | x_{t−1})
    applied ``jump_length`` times). The returned sample holds the known data exactly where
    mask = 0. One denoiser call per +1 move of :func:`repaint_schedule` (about
    n·(1 + (resamples − 1)·(1 − jump_length/n)) calls); each call draws one noise tensor per sample.
    """
    sig = prepare_sigmas(sigmas, x)
    noise = require_noise(noise, x, "repaint")
    mask, known = prepare_inpaint_mask(mask, known, tuple(x.shape))
    mask = _fit_batch(mask, x.shape[0], "mask").to(x.device, x.dtype)
    known = _fit_batch(known, x.shape[0], "known data").to(x.device, x.dtype)

    def with_known(state: Tensor, level: float, z: Tensor | None) -> Tensor:
        fresh = known if z is None else known + level * z
        return mask * state + (1 - mask) * fresh

    seq = repaint_schedule(len(sig) - 1, jump_length, resamples)
    x = with_known(x, sig[0], noise.randn_like(x))
    for a, b in zip(seq[:-1], seq[1:]):
        s, s_next = sig[a], sig[b]
        if b < a:  # jump back up: forward noise from σ_a (lower) to σ_b (higher)
            x = x + math.sqrt(s_next**2 - s**2) * noise.randn_like(x)
            continue
        denoised = denoiser(x, sigma_vector(s, x), cond)
        x = denoised + (s_next**2 / s**2) * (x - denoised)
        if s_next > 0:  # one draw per sample: [step noise, fresh noise of the known region]
            z = noise.randn((2, *x.shape[1:]), device=x.device, dtype=x.dtype)
            x = with_known(x + (s_next / s) * math.sqrt(s**2 - s_next**2) * z[:, 0], s_next, z[:, 1])
        else:
            x = with_known(x, 0.0, None)
        report_step(callback, a, x, s, s_next, denoised)
    return x
