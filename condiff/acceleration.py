"""Speed options for the diffusion models (mostly for CUDA GPUs).

Each option changes how the networks run, never what they compute (DESIGN.md §7); the error
each one may introduce is stated here and checked by ``tests/test_speed_options.py``:

==================  =========================================================  ==================
option              what it does                                               error
==================  =========================================================  ==================
``fused_qkv``       one matrix product for Q, K, V of self-attention (K, V of  summation order only
                    cross-attention) with the stacked weights                  (≤ 1e-6 rel. fp32)
``channels_last``   NHWC memory layout of the convolutional networks' weights  summation order only
                    (cuDNN's fastest convolution layout on tensor cores)
``compile``         ``torch.compile`` (fullgraph, static shapes) of each step  fused kernels:
                    network and of the VAE decoder; recompiles once per shape  ≈ 1e-6 rel. fp32,
                                                                               bf16 rounding in bf16
``cuda_graphs``     ``compile`` in "reduce-overhead" mode: each shape's step   as ``compile``
                    is captured once as a CUDA graph and replayed (CUDA only;
                    None = on with ``compile`` on a CUDA device)
``vae_tiling``      decode latents larger than ``tile`` in overlapping tiles   tile seams: the
                    with linear blending (bounded memory for large images)     decoder's GroupNorm
                                                                               sees tile statistics
==================  =========================================================  ==================

The options apply to the networks the sampler calls once per step (:func:`accelerated_networks`):
the ``unet`` and ``inpaint_unet`` of a :class:`~condiff.models.ldm.LatentDiffusion` (whose
``vae.decoder``, run once per image, is compiled without CUDA graphs); the ``base_unet`` and
``sr_unet`` of a :class:`~condiff.models.cascade.CascadeModel`; the ``decoder`` U-Net and
``prior`` of an :class:`~condiff.models.unclip.UnCLIPModel` and the networks of its ``upsampler``
cascade. The prior is a transformer over embedding vectors: it has no ``Attention`` layers to
fuse and no convolutions to lay out channels-last, so only ``compile`` changes it.

Classifier-free guidance already evaluates both branches as one batched call
(:class:`condiff.guidance.ClassifierFreeGuidance`, ``batched=True``), and attention always goes
through :func:`torch.nn.functional.scaled_dot_product_attention`, which picks the flash / cuDNN /
memory-efficient kernel on a GPU by itself. Half precision is the ``dtype`` of
:func:`condiff.models.registry.load_model`.

Use :func:`accelerate` (or ``load_model(..., speed=...)`` / the CLI's ``--fast`` and
``--compile``). :data:`FAST` is the preset chosen by measurement (bench/gpu_speed.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from .errors import DeviceError, InputError

__all__ = ["SpeedOptions", "FAST", "COMPILE", "accelerate", "accelerated_networks", "fuse_qkv", "tiled_decode",
           "resolve_speed"]


@dataclass(frozen=True)
class SpeedOptions:
    """Which speed options to apply (see the module table). ``backend`` is torch.compile's."""

    fused_qkv: bool = False
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool | None = None  # None: with compile, on for a CUDA device (measured faster: see COMPILE)
    vae_tiling: bool = False
    tile: int = 64  # latent pixels per tile side
    tile_overlap: int = 16
    backend: str = "inductor"
    compile_mode: str | None = None

    def validate(self) -> "SpeedOptions":
        if self.cuda_graphs and not self.compile:
            raise InputError("cuda_graphs needs compile=True (CUDA graphs are captured by torch.compile)")
        if not 0 <= self.tile_overlap < self.tile // 2:
            raise InputError(f"tile_overlap must lie in [0, tile/2), got {self.tile_overlap} for tile {self.tile}")
        return self


FAST = SpeedOptions(fused_qkv=True, channels_last=True)
"""``--fast``: options that cost no compile time and do not change results beyond summation order. Off by
default: on an H100 (bf16, SD-1.5 shape, bench/results/gpu_speed-h100-*.json) it changed one CFG step from
20.7 to 21.0 ms and the end-to-end time of 512² × 30 steps by −16 % (batch 1), +24 % (batch 4) and −3 % (batch 8):
the eager step is launch-bound (71 % of its wall time are gaps between kernels)."""

COMPILE = SpeedOptions(fused_qkv=True, channels_last=True, compile=True)
"""``--compile``: FAST plus torch.compile of the U-Net and decoder (compiles once per shape), on a CUDA
device with the U-Net step captured as a CUDA graph (``cuda_graphs`` None → on). H100, bf16: one CFG
step 7.8 ms (13.2 ms without CUDA graphs, 20.7 ms eager); 512² × 30 steps at batch 1 in 0.22 s (0.41 s,
0.82 s); compiling takes 35–60 s per new shape."""


def resolve_speed(fast: bool = False, compile: bool = False) -> SpeedOptions | None:
    """The preset of the CLI flags ``--fast`` / ``--compile`` (None: plain eager)."""
    if compile:
        return COMPILE
    return FAST if fast else None


def fuse_qkv(net: nn.Module, on: bool = True) -> int:
    """Fuse (or unfuse) the Q/K/V projections of every attention layer of ``net``; returns how many."""
    from .nn.attention import Attention

    n = 0
    for m in net.modules():
        if isinstance(m, Attention):
            m.fuse_projections(on)
            n += 1
    return n


#: the attributes that hold step networks, over the model classes of the module table
_STEP_NETWORKS = ("unet", "inpaint_unet", "base_unet", "sr_unet", "decoder", "prior")


def _own_networks(model: Any) -> list[nn.Module]:
    return [m for m in (getattr(model, name, None) for name in _STEP_NETWORKS) if isinstance(m, nn.Module)]


def accelerated_networks(model: Any) -> list[nn.Module]:
    """The networks :func:`accelerate` speeds up in ``model``: those the sampler calls once per step,
    its ``upsampler``'s included (the module table). Empty: the model has none to speed up."""
    upsampler = getattr(model, "upsampler", None)
    return _own_networks(model) + (accelerated_networks(upsampler) if upsampler is not None else [])


def _compile(module: nn.Module, options: SpeedOptions) -> None:
    mode = options.compile_mode or ("reduce-overhead" if options.cuda_graphs else None)
    module.compile(fullgraph=True, dynamic=False, backend=options.backend, mode=mode)


def accelerate(model: Any, options: SpeedOptions | None = None, **changes) -> Any:
    """Apply ``options`` (default :data:`FAST`, updated with keyword ``changes``) to ``model`` in place.

    Call it after moving the model to its device/dtype and after merging LoRAs (fused weights
    are copies). Raises :class:`~condiff.errors.DeviceError` for an option the device cannot run.
    Records the options in ``model.info["speed"]``.
    """
    options = replace(options or FAST, **changes).validate()
    device = model.device
    if options.cuda_graphs is None:
        options = replace(options, cuda_graphs=options.compile and device.type == "cuda")
    if options.cuda_graphs and device.type != "cuda":
        raise DeviceError(f"CUDA graphs need a CUDA device, the model is on {device}; drop cuda_graphs")
    if options.compile and options.backend == "inductor" and device.type not in ("cuda", "cpu", "xpu"):
        raise DeviceError(f"torch.compile's inductor backend does not support {device.type}; drop compile")
    vae = getattr(model, "vae", None)
    if not accelerated_networks(model):
        raise InputError(f"{type(model).__name__} has no network the speed options cover; run it without them")
    if options.vae_tiling and vae is None:
        raise InputError(f"vae_tiling applies to latent-diffusion models, {type(model).__name__} has no VAE; "
                         "drop vae_tiling")
    for net in _own_networks(model):
        if options.fused_qkv:
            fuse_qkv(net)
        if options.channels_last and any(isinstance(m, nn.Conv2d) for m in net.modules()):
            net.to(memory_format=torch.channels_last)
        if options.compile:
            _compile(net, options)
    if vae is not None:
        if options.channels_last:
            vae.to(memory_format=torch.channels_last)
        if options.compile and hasattr(vae, "decoder"):
            _compile(vae.decoder, replace(options, cuda_graphs=False))
    if options.vae_tiling:
        model.decode_tile = (options.tile, options.tile_overlap)
    if getattr(model, "upsampler", None) is not None:
        accelerate(model.upsampler, options)
    model.info["speed"] = {k: v for k, v in asdict(options).items()}
    return model


def _ramp(n: int, overlap: int, first: bool, last: bool, like: Tensor) -> Tensor:
    """1-D blending weights of a tile: linear ramps of ``overlap`` samples on inner edges."""
    w = torch.ones(n, dtype=torch.float32, device=like.device)
    if overlap > 0:
        ramp = (torch.arange(overlap, dtype=torch.float32, device=like.device) + 0.5) / overlap
        if not first:
            w[:overlap] = ramp
        if not last:
            w[-overlap:] = ramp.flip(0)
    return w


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


def tiled_decode(decode, z: Tensor, tile: int = 64, overlap: int = 16, scale: int = 8) -> Tensor:
    """``decode(z)`` in overlapping latent tiles of ``tile``² blended linearly (float32 result).

    ``scale`` is the decoder's upsampling factor. Memory is bounded by one tile; the result
    differs from the whole-image decode near seams (the decoder's GroupNorm and attention see a
    tile instead of the image), which the overlap blending hides.
    """
    b, _, h, w = z.shape
    if h <= tile and w <= tile:
        return decode(z).float()
    out = weight = None
    for y in _starts(h, tile, overlap):
        for x in _starts(w, tile, overlap):
            part = decode(z[:, :, y:y + tile, x:x + tile]).float()
            th, tw = part.shape[-2:]
            if out is None:
                out = part.new_zeros(b, part.shape[1], h * scale, w * scale)
                weight = part.new_zeros(1, 1, h * scale, w * scale)
            wy = _ramp(th, overlap * scale, y == 0, y + tile >= h, part)
            wx = _ramp(tw, overlap * scale, x == 0, x + tile >= w, part)
            m = (wy[:, None] * wx[None, :])[None, None]
            ys, xs = y * scale, x * scale
            out[:, :, ys:ys + th, xs:xs + tw] += part * m
            weight[:, :, ys:ys + th, xs:xs + tw] += m
    return out / weight
