"""FP8 linear layers for Ada/Hopper GPUs, measured by ``bench/gpu_speed.py`` (section ``fp8``).

Not a condiff speed option: on an H100 (bf16, SD-1.5 shape) it made the compiled CUDA-graph step slower
(9.7 vs 7.8 ms) and the eager step much slower (39 vs 21 ms), and cost the built-in model 15 dB of PSNR
against bf16 on the same seeds (bench/results/gpu_speed-h100-*.json), so it stays here.

A :class:`Float8Linear` computes ``y = x Wᵀ + b`` as an 8-bit floating-point matrix product
(e4m3: 4 exponent and 3 mantissa bits, largest value 448) on the tensor cores, with row-wise scales
(Micikevicius et al. 2022, "FP8 formats for deep learning", §4.3):

    s_w[n] = max_k |W[n, k]| / 448,   W₈ = round_e4m3(W / s_w)            (once, at conversion)
    s_x[m] = max_k |x[m, k]| / 448,   x₈ = round_e4m3(x / s_x)            (every call)
    y[m, n] = s_x[m] · s_w[n] · Σ_k x₈[m, k] W₈[n, k] + b[n]

so each row keeps its own dynamic range and the only error is e4m3's rounding (relative step
2⁻³ per factor). The error this brings into images is measured against bf16 on the same seeds by
``bench/gpu_speed.py`` (section ``fp8``). Only the U-Net's attention and feed-forward layers are
converted (convolutions, the time embedding and the text encoder stay in bf16/fp16).

``emulate=True`` runs the same quantisation and scales with an ordinary matrix product (any
device): slower, for checking the numerics where no FP8 tensor cores exist.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condiff.errors import DeviceError

__all__ = ["Float8Linear", "to_float8", "from_float8", "fp8_supported", "float8_error"]

E4M3_MAX = 448.0


def fp8_supported(device: torch.device) -> bool:
    """True on CUDA devices of compute capability ≥ 8.9 (Ada, Hopper) with torch's FP8 matrix product."""
    return (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
            and hasattr(torch, "_scaled_mm") and hasattr(torch, "float8_e4m3fn"))


def _quantize(t: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise e4m3 quantisation of a 2-D tensor: (t₈ [M, K], scale [M, 1] float32)."""
    scale = t.detach().abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


class Float8Linear(nn.Module):
    """A frozen ``nn.Linear`` run as a row-wise-scaled FP8 matrix product (see the module doc)."""

    def __init__(self, linear: nn.Linear, emulate: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.emulate = linear.in_features, linear.out_features, emulate
        weight, scale = _quantize(linear.weight)
        self.register_buffer("weight_fp8", weight, persistent=False)     # [N, K]
        self.register_buffer("weight_scale", scale.t().contiguous(), persistent=False)  # [1, N]
        self.bias = linear.bias
        object.__setattr__(self, "source", linear)  # kept for from_float8, not a submodule (state dict unchanged)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x8, x_scale = _quantize(x.reshape(-1, self.in_features))
        if self.emulate:
            y = (x8.float() * x_scale) @ (self.weight_fp8.float() * self.weight_scale.t()).t()
            y = y.to(x.dtype)
        else:
            y = torch._scaled_mm(x8, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale,
                                 out_dtype=x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


def _targets(net: nn.Module):
    """(parent, attribute name, linear) of the attention and feed-forward layers of ``net``."""
    from condiff.nn.attention import Attention, FeedForward, GEGLU

    for module in net.modules():
        if isinstance(module, Attention):
            for name in ("to_q", "to_k", "to_v"):
                yield module, name, getattr(module, name)
            yield module.to_out, "0", module.to_out[0]
        elif isinstance(module, GEGLU):
            yield module, "proj", module.proj
        elif isinstance(module, FeedForward):
            yield module.net, "2", module.net[2]


def to_float8(net: nn.Module, emulate: bool = False) -> int:
    """Replace the attention/feed-forward linear layers of ``net`` by :class:`Float8Linear`; returns how many.

    Dimensions must be multiples of 16 (the FP8 tensor cores' tile); without ``emulate`` the network
    must be on a device where :func:`fp8_supported` holds (else :class:`DeviceError`).
    """
    device = next(net.parameters()).device
    if not emulate and not fp8_supported(device):
        raise DeviceError(f"FP8 matrix products need an NVIDIA GPU of compute capability 8.9+ (Ada/Hopper), "
                          f"the model is on {device}; run without --fp8 (fp8=False)")
    n = 0
    for parent, name, linear in list(_targets(net)):
        if isinstance(linear, nn.Linear) and linear.in_features % 16 == 0 and linear.out_features % 16 == 0:
            setattr(parent, name, Float8Linear(linear, emulate))  # ModuleList children are named "0", "1", ...
            n += 1
    return n


def from_float8(net: nn.Module) -> int:
    """Undo :func:`to_float8` (the original layers were kept); returns how many were restored."""
    n = 0
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Float8Linear):
                setattr(parent, name, child.source)
                n += 1
    return n


def float8_error(linear: nn.Linear, x: Tensor) -> float:
    """Relative error ‖y₈ − y‖ / ‖y‖ of the emulated FP8 product on input ``x`` (for tests and reports)."""
    with torch.no_grad():
        want = F.linear(x, linear.weight, linear.bias)
        got = Float8Linear(linear, emulate=True)(x)
    return float((got - want).norm() / want.norm().clamp(min=1e-12))
