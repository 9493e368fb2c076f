"""The σ-space denoiser contract and the wrappers that turn networks into denoisers.

Every model in condiff, whatever it predicts, is seen by samplers as a **denoiser**
``D(x, σ, cond) -> x̂0`` in the variance-exploding view ``x = x0 + σ·ε`` (DESIGN.md §3,
Karras et al. 2022). From it:

* score  ∇ log p_σ(x) = (D(x, σ) - x) / σ²       (Tweedie; thesis eq. 2.16 in VE form)
* ODE derivative dx/dσ = (x - D(x, σ)) / σ       (probability-flow ODE, Karras et al. eq. 3)

A DDPM/VP network sees x_vp = √ᾱ·x0 + √(1-ᾱ)·ε. With σ = √((1-ᾱ)/ᾱ) this is
x_vp = x / √(1+σ²), which is the input scaling applied here. The prediction types:

* ``eps``:   x̂0 = x - σ·ε̂                            (Ho et al. 2020, thesis eq. 2.13)
* ``x0``:    x̂0 = net output
* ``v``:     x̂0 = x/(1+σ²) - σ/√(1+σ²)·v̂           (Salimans & Ho 2022, v = √ᾱ ε - √(1-ᾱ) x0)
* ``score``: x̂0 = x + σ²·ŝ                          (NCSN, thesis eq. 2.6)
* ``edm``:   x̂0 = c_skip·x + c_out·F               (Karras et al. 2022, Table 1)

Networks know nothing of σ: they receive a scaled input and a "time" input made by a
:class:`TimeEncoding` (a discrete DDPM timestep, or log σ), plus a :class:`Cond`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .schedules import DiscreteSchedule

__all__ = [
    "Cond",
    "Denoiser",
    "Network",
    "TimeEncoding",
    "DiscreteTime",
    "LogSigmaTime",
    "NetworkDenoiser",
    "DenoiserWrapper",
    "eps_denoiser",
    "v_denoiser",
    "x0_denoiser",
    "score_denoiser",
    "edm_denoiser",
    "sigma_batch",
    "work_dtype",
    "network_dtype",
    "append_dims",
    "to_score",
    "to_d",
    "PREDICTIONS",
]

PREDICTIONS = ("eps", "x0", "v", "score", "edm")


@dataclass
class Cond:
    """What a network may be conditioned on. Every field is optional.

    * ``context``: cross-attention tokens [B, L, D] (text embeddings, thesis eq. 3.11-3.13)
    * ``context_mask``: [B, L] bool, True for real tokens
    * ``class_labels``: [B] long, or [B, D] float embeddings (e.g. unCLIP image embeddings)
    * ``concat``: extra input channels [B, C, H, W] concatenated after input scaling
      (inpainting mask + masked latent, SR3 low-resolution image)
    * ``control``: additive U-Net residuals (ControlNet): a dict with ``down`` (list of tensors,
      one per skip connection) and ``mid`` (tensor)
    * ``extra``: anything else a specific network understands (e.g. noise-augmentation level)
    """

    context: Tensor | None = None
    context_mask: Tensor | None = None
    class_labels: Tensor | None = None
    concat: Tensor | None = None
    control: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes) -> "Cond":
        return replace(self, **changes)

    def to(self, dtype: torch.dtype) -> "Cond":
        """The conditioning with every floating-point tensor cast to ``dtype`` (the network's).

        Integer class labels and boolean masks keep their type; control residuals are cast too.
        """

        def cast(v):
            return v.to(dtype) if isinstance(v, Tensor) and v.is_floating_point() else v

        control = None
        if self.control is not None:
            control = {**self.control, "down": [cast(t) for t in self.control.get("down", [])],
                       "mid": cast(self.control.get("mid"))}
        return Cond(
            cast(self.context), self.context_mask, cast(self.class_labels), cast(self.concat), control,
            {k: cast(v) for k, v in self.extra.items()},
        )

    def batch_size(self) -> int | None:
        for v in (self.context, self.class_labels, self.concat):
            if v is not None:
                return v.shape[0]
        return None

    def select(self, index: Tensor | slice) -> "Cond":
        """The conditioning of a sub-batch (used by guidance to split/stack batches)."""

        def pick(v):
            return v[index] if isinstance(v, Tensor) else v

        control = None
        if self.control is not None:
            control = {
                "down": [pick(t) for t in self.control.get("down", [])],
                "mid": pick(self.control.get("mid")),
            }
        return Cond(
            pick(self.context), pick(self.context_mask), pick(self.class_labels), pick(self.concat),
            control, {k: pick(v) for k, v in self.extra.items()},
        )

    @staticmethod
    def cat(conds: "list[Cond]") -> "Cond":
        """Concatenate conditionings along the batch (all must set the same fields)."""

        def join(vals):
            present = [v for v in vals if v is not None]
            if not present:
                return None
            if len(present) != len(vals):
                raise ValueError("cannot batch conditionings that set different fields")
            if isinstance(present[0], Tensor):
                return torch.cat(present)
            return present[0]

        control = None
        if any(c.control is not None for c in conds):
            if not all(c.control is not None for c in conds):
                raise ValueError("cannot batch conditionings with and without control residuals")
            downs = [c.control["down"] for c in conds]
            control = {"down": [torch.cat(ts) for ts in zip(*downs)], "mid": join([c.control["mid"] for c in conds])}
        keys = set().union(*(c.extra for c in conds))
        return Cond(
            join([c.context for c in conds]), join([c.context_mask for c in conds]),
            join([c.class_labels for c in conds]), join([c.concat for c in conds]), control,
            {k: join([c.extra.get(k) for c in conds]) for k in keys},
        )


@runtime_checkable
class Denoiser(Protocol):
    """D(x, σ, cond) -> x̂0 with x = x0 + σ ε. ``sigma`` is a scalar or a [B] tensor."""

    sigma_min: float
    sigma_max: float

    def __call__(self, x: Tensor, sigma: Tensor, cond: Cond | None = None) -> Tensor: ...


class Network(Protocol):
    """A network: ``net(x_scaled, time_input, cond) -> prediction`` (knows nothing of σ)."""

    def __call__(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor: ...


class TimeEncoding(Protocol):
    def __call__(self, sigma: Tensor) -> Tensor: ...


class DiscreteTime:
    """Maps σ to the (fractional) DDPM timestep of a discrete schedule."""

    def __init__(self, schedule: DiscreteSchedule):
        self.schedule = schedule

    def __call__(self, sigma: Tensor) -> Tensor:
        """t(σ) in float32 on σ's device (a device-side lookup: no host synchronisation)."""
        return self.schedule.sigma_to_t(sigma.detach()).float()


class LogSigmaTime:
    """c_noise = scale·ln σ (Karras et al. 2022 use scale = 1/4)."""

    def __init__(self, scale: float = 0.25):
        self.scale = scale

    def __call__(self, sigma: Tensor) -> Tensor:
        return (self.scale * sigma.clamp(min=1e-20).log()).float()


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Reshape a [B] tensor to [B, 1, ..., 1] with ``ndim`` dims."""
    return v.reshape(v.shape[0], *([1] * (ndim - 1)))


def work_dtype(x: Tensor) -> torch.dtype:
    """The dtype of σ-space arithmetic for a state ``x``: float32 or wider (half states are promoted)."""
    return torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32


def sigma_batch(sigma: Tensor | float, x: Tensor) -> Tensor:
    """σ as a [B] tensor on x's device in :func:`work_dtype`; validates shape and values.

    Values (finite, non-negative) are checked for Python numbers and host tensors. A tensor that
    already lives on an accelerator is not read back (that would synchronise the device at every
    sampler step); samplers validate their whole schedule once, before the loop.
    """
    dtype = work_dtype(x)
    if not isinstance(sigma, Tensor):
        value = float(sigma)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError("sigma must be finite and non-negative")
        return torch.full((x.shape[0],), value, dtype=dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.ndim != 1 or sigma.shape[0] != x.shape[0]:
        raise ValueError(f"sigma must be a scalar or have shape [{x.shape[0]}], got {tuple(sigma.shape)}")
    if sigma.device.type == "cpu" and (bool((sigma < 0).any()) or not bool(torch.isfinite(sigma).all())):
        raise ValueError("sigma must be finite and non-negative")
    return sigma.to(device=x.device, dtype=dtype)


def network_dtype(net, default: torch.dtype) -> torch.dtype:
    """The dtype of a network's first floating-point parameter (``default`` for a plain callable
    or a module without parameters)."""
    if not isinstance(net, nn.Module):
        return default
    for p in net.parameters():
        if p.is_floating_point():
            return p.dtype
    return default


class NetworkDenoiser(nn.Module):
    """Wraps a network with a prediction type and a time encoding into a :class:`Denoiser`."""

    def __init__(
        self,
        net: nn.Module,
        prediction: str,
        time: TimeEncoding,
        *,
        sigma_min: float,
        sigma_max: float,
        vp_input: bool = True,
        sigma_data: float = 1.0,
    ):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}; choose one of {PREDICTIONS}")
        self.net = net
        self.prediction = prediction
        self.time = time
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.vp_input = vp_input
        self.sigma_data = float(sigma_data)

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(c_in, c_skip, c_out) for this prediction type, each [B]."""
        sd = self.sigma_data
        if self.prediction == "edm":
            c_in = 1 / (sigma**2 + sd**2).sqrt()
            return c_in, sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sigma**2 + 1).sqrt() if self.vp_input else torch.ones_like(sigma)
        if self.prediction == "eps":
            return c_in, torch.ones_like(sigma), -sigma
        if self.prediction == "x0":
            return c_in, torch.zeros_like(sigma), torch.ones_like(sigma)
        if self.prediction == "v":
            return c_in, sd**2 / (sigma**2 + sd**2), -sigma * sd / (sigma**2 + sd**2).sqrt()
        return c_in, torch.ones_like(sigma), sigma**2  # score

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Cond | None = None) -> Tensor:
        """x̂0 = c_skip·x + c_out·F(c_in·x, t(σ), cond), in :func:`work_dtype` (float32 or wider).

        Mixed precision: the preconditioning runs in float32; the network's input, its
        conditioning (context, concat channels, control residuals, float labels) are cast to the
        network's dtype (fp16/bf16 weights work) and its output back to float32, so samplers
        keep float32 state whatever precision the network runs in.
        """
        dtype = work_dtype(x)
        x = x.to(dtype)
        sigma = sigma_batch(sigma, x)
        c_in, c_skip, c_out = (append_dims(c, x.ndim).to(dtype) for c in self.scalings(sigma))
        net_dtype = network_dtype(self.net, dtype)
        inp = (x * c_in).to(net_dtype)
        if cond is not None:
            cond = cond.to(net_dtype)
            if cond.concat is not None:
                if cond.concat.shape[0] != x.shape[0] or cond.concat.shape[2:] != x.shape[2:]:
                    raise ValueError(
                        f"concat conditioning of shape {tuple(cond.concat.shape)} does not fit input {tuple(x.shape)}"
                    )
                inp = torch.cat([inp, cond.concat], dim=1)
        out = self.net(inp, self.time(sigma), cond)
        return c_skip * x + c_out * out.to(dtype)

    def predict_from_x0(self, x: Tensor, sigma: Tensor, x0: Tensor, noise: Tensor) -> Tensor:
        """The training target F for this parameterisation, given clean data and the noise used."""
        c_in, c_skip, c_out = (append_dims(c, x.ndim).to(x.dtype) for c in self.scalings(sigma))
        if self.prediction == "eps":
            return noise
        return (x0 - c_skip * x) / c_out


class DenoiserWrapper(nn.Module):
    """Base of ``Denoiser -> Denoiser`` wrappers (guidance, editing): forwards the σ range."""

    def __init__(self, inner: Denoiser):
        super().__init__()
        self.inner = inner

    @property
    def sigma_min(self) -> float:
        return self.inner.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.inner.sigma_max

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond | None = None) -> Tensor:  # pragma: no cover
        return self.inner(x, sigma, cond)


def _discrete(net, schedule: DiscreteSchedule, prediction: str) -> NetworkDenoiser:
    return NetworkDenoiser(
        net, prediction, DiscreteTime(schedule), sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max
    )


def eps_denoiser(net, schedule: DiscreteSchedule) -> NetworkDenoiser:
    """An ε-predicting discrete-time DDPM network (thesis eq. 2.13) as a denoiser."""
    return _discrete(net, schedule, "eps")


def v_denoiser(net, schedule: DiscreteSchedule) -> NetworkDenoiser:
    """A v-predicting discrete-time network (SD 2.x 768-v) as a denoiser."""
    return _discrete(net, schedule, "v")


def x0_denoiser(net, schedule: DiscreteSchedule) -> NetworkDenoiser:
    return _discrete(net, schedule, "x0")


def score_denoiser(net, sigma_min: float, sigma_max: float, time_scale: float = 0.25) -> NetworkDenoiser:
    """A continuous-σ score network s(x, σ) ≈ ∇ log p_σ(x) (NCSN, thesis eq. 2.6) as a denoiser."""
    return NetworkDenoiser(
        net, "score", LogSigmaTime(time_scale), sigma_min=sigma_min, sigma_max=sigma_max, vp_input=False
    )


def edm_denoiser(net, sigma_min: float, sigma_max: float, sigma_data: float = 0.5) -> NetworkDenoiser:
    """Karras et al. (2022) preconditioning F_θ -> D_θ."""
    return NetworkDenoiser(
        net, "edm", LogSigmaTime(0.25), sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data
    )


def to_score(x: Tensor, sigma: Tensor, x0: Tensor) -> Tensor:
    """∇_x log p_σ(x) = (x̂0 - x)/σ² (Tweedie's formula)."""
    return (x0 - x) / append_dims(sigma_batch(sigma, x), x.ndim) ** 2


def to_d(x: Tensor, sigma: Tensor, x0: Tensor) -> Tensor:
    """Probability-flow ODE derivative dx/dσ = (x - x̂0)/σ."""
    return (x - x0) / append_dims(sigma_batch(sigma, x), x.ndim)
