"""Compact fine-tuned weights: the difference to the base model, quantized to 4 bits per weight.

A DreamBooth fine-tune (thesis §3.3.1) changes every U-Net weight a little, so storing it as a
full copy costs as much as the model. Stored as Δ = θ_fine − θ_base instead, each weight matrix
(rows = output channels, any trailing shape flattened) becomes

    q_ij = round(Δ_ij / s_i) ∈ [−7, 7],   s_i = max_j |Δ_ij| / 7   (one fp16 scale per row)

packed two values per byte (8 bytes per 16 weights + the scales) and, by default, compressed with
LZMA (lossless; the nibbles of a fine-tune's difference are far from uniform, about 18 % smaller);
vectors (biases, norms) are kept in fp16. Applying adds s_i·q_ij back to the base. The per-weight error is at most s_i/2, i.e. at most
1/14 of the largest change in that row (plus the fp16 rounding of s_i); the shipped artefact is evaluated as stored, so every
figure measured from it includes this error. Keys keep their ``unet.`` prefix; :data:`DELTA_KIND`
in the file's metadata (``condiff.delta``) marks the encoding. Written by
:func:`condiff.personalize.save_finetuned_weights`, read by :func:`condiff.models.sd_loader.load_finetuned_model`.
"""

from __future__ import annotations

import lzma
from typing import Mapping

import torch
from torch import Tensor

__all__ = ["DELTA_KIND", "encode_delta", "decode_delta"]

DELTA_KIND = "int4-rows"
_Q = 7  # symmetric levels −7 … 7 (the nibble 0 … 14 with an offset of 7)


def _pack(q: Tensor) -> Tensor:
    """[N] int8 in [−7, 7] -> [ceil(N/2)] uint8, two nibbles a byte (low nibble first)."""
    u = (q.to(torch.int16) + _Q).to(torch.uint8)
    if u.numel() % 2:
        u = torch.cat([u, u.new_full((1,), _Q)])
    return u[0::2] | (u[1::2] << 4)


def _unpack(packed: Tensor, n: int) -> Tensor:
    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack([lo, hi], 1).reshape(-1)[:n].to(torch.int16) - _Q


def encode_delta(fine: Mapping[str, Tensor], base: Mapping[str, Tensor], *, compress: bool = True) -> dict[str, Tensor]:
    """``{name: fine − base}`` encoded as ``name.q4`` (packed nibbles; ``name.q4xz`` when LZMA-compressed) +
    ``name.scale`` for tensors of ≥ 2 dimensions and ``name`` (fp16) for the rest; names missing from ``base``
    are a KeyError."""
    out: dict[str, Tensor] = {}
    for name, w in fine.items():
        d = (w.detach().float().cpu() - base[name].detach().float().cpu())
        if d.ndim < 2 or not w.is_floating_point():
            out[name] = d.to(torch.float16).contiguous()
            continue
        rows = d.reshape(d.shape[0], -1)
        scale = (rows.abs().amax(1) / _Q).clamp_min(1e-12)
        q = torch.round(rows / scale[:, None]).clamp(-_Q, _Q).to(torch.int8).reshape(-1)
        packed = _pack(q).contiguous()
        if compress:
            blob = lzma.compress(packed.numpy().tobytes(), preset=9 | lzma.PRESET_EXTREME)
            out[f"{name}.q4xz"] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        else:
            out[f"{name}.q4"] = packed
        out[f"{name}.scale"] = scale.to(torch.float16).contiguous()
    return out


def decode_delta(stored: Mapping[str, Tensor], base: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The fine-tuned tensors ``base + Δ`` from :func:`encode_delta`'s output (dtype of ``base``)."""
    out: dict[str, Tensor] = {}
    for name, w in base.items():
        packed = stored.get(f"{name}.q4")
        if f"{name}.q4xz" in stored:
            raw = lzma.decompress(stored[f"{name}.q4xz"].numpy().tobytes())
            packed = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        if packed is not None:
            scale = stored[f"{name}.scale"].float()
            q = _unpack(packed, w.numel()).float().reshape(w.shape[0], -1)
            d = (q * scale[:, None]).reshape(w.shape)
        elif name in stored:
            d = stored[name].float().reshape(w.shape)
        else:
            raise KeyError(f"the weight difference has no entry for {name!r}: it was made for another model")
        out[name] = (w.detach().float().cpu() + d).to(w.dtype)
    extra = {k.removesuffix(".q4xz").removesuffix(".q4").removesuffix(".scale") for k in stored} - set(base)
    if extra:
        raise KeyError(f"the weight difference holds tensors the model lacks: {sorted(extra)[:3]}")
    return out
