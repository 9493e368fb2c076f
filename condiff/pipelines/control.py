"""ControlNet image generation (Zhang et al. 2023; thesis §3.1.3, Fig. 3.3; experiment 1, §4.2.4).

The locked U-Net is driven by one or more ControlNets, each fed a *condition image* c (edges,
depth, normals, pose …) made by the matching preprocessor (:mod:`condiff.preprocess`) or given
ready. Their zero-convolution residuals are summed (multi-ControlNet) and added to the U-Net's
skip connections (:class:`condiff.nn.controlnet.ControlledUNet`).

Schedule control lives at the σ level, so the U-Net knows nothing of σ (DESIGN.md §3):
:class:`ControlSchedule` is a ``Denoiser -> Denoiser`` wrapper that, at every call, decides from σ
alone which ControlNets are active and evaluates the U-Net through a ``ControlledUNet`` holding
exactly those (conditioning scale 0, i.e. no residual, outside a unit's interval). A unit's
interval ``[start, end]`` is a fraction of the denoising schedule measured on the model's own
timestep axis: progress(σ) = 1 − t(σ)/(T − 1), with t(σ) the (fractional) DDPM timestep of σ, so
start = 0 is pure noise, end = 1 the clean image. With the usual "trailing" step spacing, step i of
N has progress ≈ i/N and the rule equals diffusers' ``control_guidance_start/end``. A denoiser
without a discrete table uses the log-σ fraction log(σ_max/σ)/log(σ_max/σ_min) instead. When no
unit is active the plain U-Net denoiser is called, so scale 0 (or an empty interval) reproduces
text-to-image generation bit for bit.

Built-in ControlNets ship as int8 weights with one scale per output channel
(:func:`condiff.models.weights.quantize_int8`): 5.1 M parameters → ≈ 5.2 MB instead of 10.2 MB in
fp16, which keeps six of them inside the weights budget (DESIGN.md §7).
:func:`load_controlnet_folder` reads int8 and plain fp16/fp32 component folders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..denoisers import Cond, DenoiserWrapper, NetworkDenoiser, sigma_batch
from ..images import ImageSource, fit_image, load_image
from ..models.ldm import LatentDiffusion
from ..nn.controlnet import ControlledUNet, ControlNet, ControlNetConfig
from ..preprocess import get_preprocessor, list_preprocessors
from ..samplers.registry import model_schedule
from .. import validate as V
from .common import PipelineResult, check_request
from .text2img import generate

__all__ = [
    "ControlUnit",
    "ControlSchedule",
    "schedule_progress",
    "control",
    "prepare_condition",
    "resolve_controlnets",
    "load_builtin_controlnet",
    "load_controlnet_folder",
    "controlnet_component",
    "check_control_types",
]


# ============================================================================ schedule gating


@dataclass
class ControlUnit:
    """One ControlNet with its condition image [B, C, H, W] in [0, 1], conditioning scale and
    active fraction ``[start, end]`` of the schedule (0 = pure noise, 1 = clean image)."""

    net: ControlNet
    image: Tensor
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self):
        for name in ("scale", "start", "end"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"control {name} must be a finite number, got {v!r}")
            setattr(self, name, float(v))
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(
                f"control start/end must satisfy 0 ≤ start ≤ end ≤ 1 (fractions of the schedule), "
                f"got start={self.start}, end={self.end}"
            )
        if self.image.ndim != 4:
            raise ValueError(f"a control image must be [B, C, H, W], got {tuple(self.image.shape)}")


def schedule_progress(denoiser, sigma: Tensor) -> Tensor:
    """Fraction of the denoising schedule reached at σ, in [0, 1] (see the module docstring)."""
    table = model_schedule(denoiser)
    if table is not None:
        t = table.sigma_to_t(sigma.detach().double().cpu())
        return (1.0 - t / (table.num_steps - 1)).clamp(0, 1)
    lo, hi = math.log(denoiser.sigma_min), math.log(denoiser.sigma_max)
    s = sigma.detach().double().cpu().clamp(min=1e-20).log()
    return ((hi - s) / max(hi - lo, 1e-12)).clamp(0, 1)


class ControlSchedule(DenoiserWrapper):
    """``Denoiser -> Denoiser``: the U-Net denoiser ``inner`` driven by the ControlNets of ``units``,
    each only while the schedule's progress (a function of σ) lies in its ``[start, end]``.

    ``inner`` must be the :class:`~condiff.denoisers.NetworkDenoiser` of the locked U-Net (e.g.
    ``model.denoiser()``); for every set of active units a ``NetworkDenoiser`` over a
    :class:`ControlledUNet` with the same preconditioning is built once and reused. Rows of a
    batch at different σ (per-sample noise levels) are evaluated per activity pattern.
    """

    _TOL = 1e-9  # closed intervals, robust to the last-ulp noise of σ → t

    def __init__(self, inner: NetworkDenoiser, units: Sequence[ControlUnit]):
        super().__init__(inner)
        if not isinstance(inner, NetworkDenoiser):
            raise ValueError("ControlSchedule wraps the U-Net's NetworkDenoiser (model.denoiser()), "
                             f"not {type(inner).__name__}; put guidance wrappers outside it")
        self.units = list(units)
        if not self.units:
            raise ValueError("ControlSchedule needs at least one ControlUnit")
        self.controlnets = nn.ModuleList(u.net for u in self.units)
        self._denoisers: dict[tuple[bool, ...], Any] = {}

    def active(self, sigma: Tensor) -> Tensor:
        """Boolean [units, B]: which ControlNet acts on which row at these noise levels."""
        p = schedule_progress(self.inner, sigma)
        rows = [((p >= u.start - self._TOL) & (p <= u.end + self._TOL) & (u.scale != 0.0)) for u in self.units]
        return torch.stack(rows).to(sigma.device)

    def _denoiser_for(self, pattern: tuple[bool, ...]):
        if not any(pattern):
            return self.inner
        if pattern not in self._denoisers:
            inner = self.inner
            chosen = [(u.net, u.image, u.scale) for u, on in zip(self.units, pattern) if on]
            self._denoisers[pattern] = NetworkDenoiser(
                ControlledUNet(inner.net, chosen), inner.prediction, inner.time, sigma_min=inner.sigma_min,
                sigma_max=inner.sigma_max, vp_input=inner.vp_input, sigma_data=inner.sigma_data,
            )
        return self._denoisers[pattern]

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Cond | None = None) -> Tensor:
        sigma = sigma_batch(sigma, x)
        act = self.active(sigma)
        patterns = torch.unique(act.T, dim=0)
        if len(patterns) == 1:
            return self._denoiser_for(tuple(bool(v) for v in patterns[0]))(x, sigma, cond)
        out = None
        for pat in patterns:
            rows = (act.T == pat).all(1)
            d = self._denoiser_for(tuple(bool(v) for v in pat))(x, sigma, cond)
            out = d if out is None else torch.where(rows.view(-1, *([1] * (x.ndim - 1))), d, out)
        return out


# ============================================================================ weights


def load_controlnet_folder(folder: str | Path, device: str | torch.device = "cpu",
                           dtype: torch.dtype = torch.float32) -> tuple[ControlNet, dict]:
    """A ControlNet component folder (config.json + checksummed shards, int8 or float) -> (net, config)."""
    from ..models.weights import WeightsError, load_frozen, read_config

    folder = Path(folder)
    config = read_config(folder)
    if config.get("kind") != "controlnet":
        raise WeightsError(f"{folder} holds a {config.get('kind')!r} component, not a ControlNet")
    net = ControlNet(ControlNetConfig.from_dict(config["network"]))
    return load_frozen(net, folder, device=device, dtype=dtype, what="ControlNet"), config


def controlnet_component(kind: str) -> str:
    """Component name of the built-in ControlNet for a condition type."""
    return f"controlnet-{kind}"


def load_builtin_controlnet(kind: str, device: str | torch.device = "cpu",
                            dtype: torch.dtype = torch.float32) -> ControlNet:
    """The shipped ControlNet ``controlnet-<kind>`` of the built-in model (clear error if absent)."""
    from ..models import registry

    check_control_types([kind])
    name = controlnet_component(kind)
    folder = registry.component_dir(name)
    if not (folder / "config.json").exists():
        have = sorted(k.removeprefix("controlnet-") for k, ok in registry.builtin_components().items()
                      if ok and k.startswith("controlnet-"))
        raise ValueError(
            f"no ControlNet of type {kind!r} for the built-in model (no {name} under {registry.WEIGHTS_DIR}); "
            f"installed types: {', '.join(have) or 'none'}; train it with `condiff train job "
            f"--stages {name}` in a source checkout"
        )
    return load_controlnet_folder(folder, device, dtype)[0]


def check_control_types(kinds: Sequence[str]) -> None:
    """ValueError naming the valid types when any of ``kinds`` has no preprocessor/ControlNet type."""
    valid = list_preprocessors()
    bad = [k for k in kinds if k not in valid]
    if bad:
        raise ValueError(f"unknown control type(s) {bad}; choose from {', '.join(valid)}")


def _check_fits(net: ControlNet, model: LatentDiffusion, kind: str) -> None:
    a, b = net.config, model.unet.config
    same = (a.block_out_channels == b.block_out_channels and a.layers_per_block == b.layers_per_block
            and a.cross_attention_dim == b.cross_attention_dim and a.in_channels <= b.in_channels)
    if not same:
        raise ValueError(
            f"the {kind!r} ControlNet was made for another U-Net (channels {a.block_out_channels}, context "
            f"{a.cross_attention_dim}) than model {model.name!r} ({b.block_out_channels}, {b.cross_attention_dim})"
        )


def resolve_controlnets(model: LatentDiffusion, kinds: Sequence[str],
                        given: Mapping[str, Any] | None = None) -> list[ControlNet]:
    """One ControlNet per kind: from ``given`` (a module or a local checkpoint path), else the
    built-in ``controlnet-<kind>`` when ``model`` is the built-in model; on the model's device/dtype."""
    check_control_types(kinds)
    given = dict(given or {})
    unknown = sorted(set(given) - set(kinds))
    if unknown:
        raise ValueError(f"ControlNets given for {unknown}, which are not among the requested types {list(kinds)}")
    nets = []
    for kind in kinds:
        src = given.get(kind)
        if isinstance(src, nn.Module):
            net = src
        elif src is not None:
            from ..models.sd_loader import load_controlnet

            net = load_controlnet(src, base=model)
        elif model.name == "builtin":
            net = load_builtin_controlnet(kind)
        else:
            raise ValueError(
                f"no ControlNet of type {kind!r} for model {model.name!r}: the built-in ControlNets only drive the "
                "built-in model; pass a ControlNet checkpoint made for this model (--controlnet PATH)"
            )
        if not isinstance(net, ControlNet):
            raise ValueError(f"the {kind!r} ControlNet must be a condiff ControlNet, got {type(net).__name__}")
        _check_fits(net, model, kind)
        nets.append(net.to(device=model.device, dtype=model.dtype).eval())
    return nets


# ============================================================================ conditions


def _as_batch(src: ImageSource | Tensor) -> Tensor:
    if isinstance(src, Tensor) and src.ndim == 4:
        if src.shape[1] != 3:
            raise ValueError(f"a batch of images/conditions must be [B, 3, H, W] in [0, 1], got {tuple(src.shape)}")
        x = src.detach().float().cpu()
        if src.dtype == torch.uint8:
            x = x / 255
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ValueError("image tensors must hold values in [0, 1]")
        return x
    return load_image(src)


def prepare_condition(src: ImageSource | Tensor, kind: str, *, preprocess: bool = True,
                      size: tuple[int, int] | None = None) -> Tensor:
    """Condition image(s) [B, 3, H, W] in [0, 1] of type ``kind``.

    ``src``: an image (path, PIL, array, tensor) or a batch tensor [B, 3, H, W]. It is first
    fitted to ``size`` = (W, H) (cover + centre crop, :func:`condiff.images.fit_image`), then, with
    ``preprocess``, run through the preprocessor of ``kind``; without, it *is* the condition.
    """
    check_control_types([kind])
    x = _as_batch(src)
    if size is not None:
        x = fit_image(x, size=size, multiple=1)
    if not preprocess:
        return x
    fn = get_preprocessor(kind)
    maps = []
    for img in x:
        arr = (img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        out = np.asarray(fn(arr), dtype=np.uint8)
        maps.append(torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).float() / 255)
    return torch.stack(maps)


def _per_unit(value, n: int, name: str) -> list[float]:
    values = [value] if isinstance(value, (int, float)) else list(value)
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise ValueError(f"got {len(values)} {name} for {n} control type(s); give one value or one per type")
    return values


# ============================================================================ pipeline


@torch.no_grad()
def control(
    model: LatentDiffusion,
    image_or_condition: ImageSource | Tensor | Sequence[ImageSource | Tensor],
    prompt: str | Sequence[str],
    *,
    kinds: str | Sequence[str],
    scales: float | Sequence[float] = 1.0,
    preprocess: bool = True,
    start: float | Sequence[float] = 0.0,
    end: float | Sequence[float] = 1.0,
    controlnets: Mapping[str, Any] | None = None,
    # The request options every pipeline takes (see check_request), spelled out: the signature is the API.
    negative: str | Sequence[str] = "",
    guidance: float | None = None,
    steps: int | None = None,
    sampler: str = "dpmpp_2m",
    schedule: str | None = None,
    seed: int | Sequence[int] = 0,
    batch_size: int | None = None,
    height: int | None = None,
    width: int | None = None,
    eta: float | None = None,
    show_progress: bool = True,
    callback=None,
) -> PipelineResult:
    """Text-to-image under one or several ControlNets (thesis §3.1.3, experiment 1 §4.2.4).

    ``image_or_condition``: one input for every type, or one per type (a sequence as long as
    ``kinds``); each is an image or a batch [B, 3, H, W]. With ``preprocess`` (default) it is run
    through the preprocessor of its type; with ``preprocess=False`` it already is the condition.
    ``scales``/``start``/``end``: one value for all types or one per type. ``controlnets`` maps a
    type to a ControlNet module or local checkpoint path (default: the built-in ones).
    Returns the images; ``result.extras["conditions"]`` holds each type's condition [B, 3, H, W].
    """
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if not kinds:
        raise ValueError("give at least one control type")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"each control type may appear once, got {kinds}")
    check_control_types(kinds)
    n = len(kinds)
    sources = list(image_or_condition) if isinstance(image_or_condition, (list, tuple)) else [image_or_condition] * n
    if len(sources) != n:
        raise ValueError(f"got {len(sources)} inputs for {n} control type(s); give one input or one per type")
    scales_, starts, ends = _per_unit(scales, n, "scales"), _per_unit(start, n, "start values"), _per_unit(end, n, "end values")
    for s_, a_, b_ in zip(scales_, starts, ends):
        V.check_float("control scale", s_)
        V.check_fraction("control start", a_)
        V.check_fraction("control end", b_)
    check_request(prompt=prompt, negative=negative, guidance=guidance, steps=steps, sampler=sampler,
                  schedule=schedule, seed=seed, batch=batch_size, eta=eta)
    height, width = V.check_size(height or model.image_size, width or model.image_size, multiple=model.downscale)
    _, h_lat, w_lat = model.latent_shape(height, width)
    nets = resolve_controlnets(model, kinds, controlnets)
    conditions: dict[str, Tensor] = {}
    units = []
    for kind, src, net, s, a, b in zip(kinds, sources, nets, scales_, starts, ends):
        c = prepare_condition(src, kind, preprocess=preprocess, size=(width, height))
        conditions[kind] = c
        f = net.controlnet_config.condition_downsampling
        need = (h_lat * f, w_lat * f)
        net_in = c if tuple(c.shape[-2:]) == need else torch.nn.functional.interpolate(
            c, size=need, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        units.append(ControlUnit(net, net_in.to(model.device, model.dtype), s, a, b))
    cond_batch = {c.shape[0] for c in conditions.values()}
    if len(cond_batch) > 1:
        raise ValueError(f"the condition batches differ in size {sorted(cond_batch)}; give equal batches")
    nb = cond_batch.pop()
    batch = batch_size if batch_size is not None else (nb if nb > 1 else (1 if isinstance(prompt, str) else len(prompt)))
    if batch % nb:
        raise ValueError(f"a batch of {nb} condition images does not divide the batch size {batch}")
    base = ControlSchedule(model.denoiser(), units)
    result = generate(model, prompt, negative=negative, guidance=guidance, steps=steps, sampler=sampler,
                      schedule=schedule, seed=seed, batch_size=batch, height=height, width=width, eta=eta,
                      show_progress=show_progress, base=base, callback=callback)
    result.params.update(pipeline="control", control=[
        {"type": k, "scale": u.scale, "start": u.start, "end": u.end, "preprocess": bool(preprocess)}
        for k, u in zip(kinds, units)
    ])
    result.extras["conditions"] = conditions
    return result
