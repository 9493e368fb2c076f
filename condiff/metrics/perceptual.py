"""Perceptual image distances: an untrained, LPIPS-like filter-bank distance and a real-LPIPS hook.

**Oriented filter-bank distance** (condiff's own, *not* LPIPS). LPIPS (Zhang et al. 2018, "The
Unreasonable Effectiveness of Deep Features as a Perceptual Metric") compares unit-normalised
deep-network activations at several depths. No pretrained network can be had offline here
(DESIGN.md §5), so this metric keeps LPIPS's recipe but swaps the learned features for a fixed,
hand-designed bank that models early vision:

1. colour-opponent channels: luminance ``(R+G+B)/3``, red–green ``R−G``, blue–yellow ``(R+G)/2−B``;
2. an image pyramid of ``n_scales`` levels (2×2 average pooling between levels);
3. at every level, first- and second-derivative-of-Gaussian filters (σ = ``sigma`` px) at
   ``n_orientations`` orientations on each opponent channel (edges and bars, like V1 simple cells);
4. divisive normalisation of the response vector r at each pixel,
   ``N(r) = r / sqrt(mean(r²) + c²)`` (Heeger 1992 contrast gain control; c = ``contrast_floor``
   keeps flat regions from amplifying round-off, where LPIPS uses a unit-norm);
5. distance = mean over levels of the mean squared difference of ``N(r)`` over pixels and
   channels, plus ``color_weight`` × the mean squared difference of the opponent channels at the
   coarsest level (LPIPS's shallow layers see colour; a pure structure term would not).

It is 0 for identical images, grows with blur (fine-scale responses vanish) and with noise, and
needs no weights. Report it under its own name (``filterbank``), never as LPIPS.

**LPIPS via torchmetrics** (:class:`TorchmetricsLPIPS`): the real metric, built from torchmetrics'
implementation with its packaged linear heads, and the torchvision backbone weights read from a
local file the user supplies (torchvision's ImageNet AlexNet/VGG16/SqueezeNet1.1 state dict).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PerceptualDistance",
    "FilterBankDistance",
    "filter_bank_distance",
    "TorchmetricsLPIPS",
    "LPIPS_BACKBONE_FILES",
]


@runtime_checkable
class PerceptualDistance(Protocol):
    """``distance(x, y) -> [B]`` for images ``[B, 3, H, W]`` in [0, 1]; 0 means identical."""

    name: str

    def __call__(self, x: Tensor, y: Tensor) -> Tensor: ...


def _check_images(x: Tensor, y: Tensor) -> None:
    for label, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor) or t.ndim != 4 or t.shape[1] != 3:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{label} must be an RGB batch [B, 3, H, W] in [0, 1], got {shape}")
    if x.shape != y.shape:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same shape")


def _opponent(x: Tensor) -> Tensor:
    """RGB → (luminance, red−green, blue−yellow)."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    return torch.stack([(r + g + b) / 3.0, r - g, (r + g) / 2.0 - b], dim=1)


def _derivative_bank(sigma: float, n_orientations: int) -> Tensor:
    """``[2·n_orientations, 1, k, k]`` zero-mean, L1-normalised Gaussian-derivative kernels.

    For orientation θ and u = x cosθ + y sinθ: first derivative ``−u/σ² g``, second derivative
    ``(u²/σ² − 1)/σ² g`` with g the isotropic Gaussian of std σ (Freeman & Adelson 1991 steerable
    basis up to normalisation).
    """
    radius = max(1, int(math.ceil(3.0 * sigma)))
    coords = torch.arange(-radius, radius + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    g = torch.exp(-(xx ** 2 + yy ** 2) / (2.0 * sigma ** 2))
    kernels = []
    for order in (1, 2):
        for k in range(n_orientations):
            theta = math.pi * k / n_orientations
            u = xx * math.cos(theta) + yy * math.sin(theta)
            ker = -u / sigma ** 2 * g if order == 1 else (u ** 2 / sigma ** 2 - 1.0) / sigma ** 2 * g
            ker = ker - ker.mean()
            kernels.append(ker / ker.abs().sum())
    return torch.stack(kernels)[:, None]


class FilterBankDistance(nn.Module):
    """Oriented multi-scale filter-bank distance (LPIPS-like, untrained); see the module docstring."""

    name = "filterbank"

    def __init__(self, n_scales: int = 4, n_orientations: int = 4, sigma: float = 1.0,
                 contrast_floor: float = 0.01, color_weight: float = 1.0):
        super().__init__()
        if n_scales < 1 or n_orientations < 1:
            raise ValueError(f"n_scales and n_orientations must be ≥ 1, got {n_scales}, {n_orientations}")
        if sigma <= 0 or contrast_floor <= 0 or color_weight < 0:
            raise ValueError("sigma and contrast_floor must be > 0 and color_weight ≥ 0; got "
                             f"{sigma}, {contrast_floor}, {color_weight}")
        self.n_scales, self.contrast_floor, self.color_weight = n_scales, contrast_floor, color_weight
        bank = _derivative_bank(sigma, n_orientations)
        self.register_buffer("bank", bank.repeat(3, 1, 1, 1).to(torch.float32), persistent=False)
        self.pad = bank.shape[-1] // 2

    def min_size(self) -> int:
        """Smallest H, W accepted: the coarsest level must still exceed the filter radius."""
        return (self.pad + 1) * 2 ** (self.n_scales - 1)

    def _responses(self, o: Tensor) -> Tensor:
        r = F.conv2d(F.pad(o, (self.pad,) * 4, mode="reflect"), self.bank.to(o.dtype), groups=3)
        return r / torch.sqrt((r * r).mean(1, keepdim=True) + self.contrast_floor ** 2)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        _check_images(x, y)
        if min(x.shape[-2:]) < self.min_size():
            raise ValueError(f"images of size {tuple(x.shape[-2:])} are too small for {self.n_scales} "
                             f"scales; need H, W ≥ {self.min_size()} or fewer n_scales")
        ox, oy = _opponent(x.float()), _opponent(y.float())
        structure = x.new_zeros(x.shape[0], dtype=torch.float32)
        for level in range(self.n_scales):
            if level:
                ox, oy = F.avg_pool2d(ox, 2), F.avg_pool2d(oy, 2)
            d = self._responses(ox) - self._responses(oy)
            structure = structure + (d * d).flatten(1).mean(1)
        colour = ((ox - oy) ** 2).flatten(1).mean(1)
        return structure / self.n_scales + self.color_weight * colour


def filter_bank_distance(x: Tensor, y: Tensor, **kwargs) -> Tensor:
    """Per-image :class:`FilterBankDistance` ``[B]`` with default (or given) settings."""
    with torch.no_grad():
        return FilterBankDistance(**kwargs)(x, y)


# --------------------------------------------------------------------------- real LPIPS hook

#: torchvision's file names of the ImageNet backbones that LPIPS uses, per LPIPS ``net``.
LPIPS_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``: no pickled code)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


def remap_torchvision_features(state: dict[str, Tensor], target_keys: list[str]) -> dict[str, Tensor]:
    """Map torchvision ``features.<i>.<rest>`` keys onto torchmetrics' sliced LPIPS backbone.

    torchmetrics splits ``model.features`` into slices whose children keep their torchvision index
    (``slice1.0.weight`` for AlexNet/VGG, ``slices.0.0.weight`` / ``slices.3.3.squeeze.weight`` for
    SqueezeNet); the index and the rest of the key identify the torchvision key.
    """
    # Same shape as models.sd_keymap.extract_ema (map keys, list the missing), other key rules: kept apart.
    out: dict[str, Tensor] = {}
    missing = []
    for key in target_keys:
        parts = key.split(".")
        rest = parts[1:] if parts[0].startswith("slice") and parts[0] != "slices" else parts[2:]
        source = "features." + ".".join(rest)
        if source in state:
            out[key] = state[source]
        else:
            missing.append(source)
    if missing:
        raise ValueError(f"backbone weight file lacks {len(missing)} keys (e.g. {missing[:3]}); "
                         "pass torchvision's ImageNet state dict of the same architecture")
    return out


class TorchmetricsLPIPS:
    """Real LPIPS (Zhang et al. 2018) through torchmetrics, from a local backbone weight file.

    ``backbone_weights`` is torchvision's ImageNet state dict for ``net`` (see
    :data:`LPIPS_BACKBONE_FILES`: e.g. ``alexnet-owt-7be5be79.pth``), as ``.pth`` or
    ``.safetensors``; the LPIPS linear heads ship inside torchmetrics. Nothing is downloaded.
    Needs ``torchvision`` for the backbone architecture. Inputs are ``[B, 3, H, W]`` in [0, 1].
    """

    def __init__(self, backbone_weights: str | os.PathLike, net: str = "alex"):
        if net not in LPIPS_BACKBONE_FILES:
            raise ValueError(f"net must be one of {sorted(LPIPS_BACKBONE_FILES)}, got {net!r}")
        path = Path(backbone_weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"LPIPS needs the torchvision ImageNet {net} backbone weights as a local file "
                f"({LPIPS_BACKBONE_FILES[net]}); {path} does not exist. Copy that file from a machine "
                "with torchvision's cache (~/.cache/torch/hub/checkpoints/) and pass its path, or use "
                "the weight-free FilterBankDistance instead.")
        try:
            import torchvision  # noqa: F401
            from torchmetrics.functional.image.lpips import _NoTrainLpips
        except ImportError as err:
            raise ImportError(f"LPIPS needs torchvision (for the {net} architecture) and "
                              f"torchmetrics' LPIPS module: {err}. Install torchvision matching your "
                              "torch, or use the weight-free FilterBankDistance.") from err
        # pnet_rand=True builds the backbone without downloading; we then load the user's file.
        model = _NoTrainLpips(net=net, pretrained=True, pnet_rand=True)
        backbone = model.net
        backbone.load_state_dict(remap_torchvision_features(_load_state_dict(path),
                                                            list(backbone.state_dict())))
        self.model = model.eval()
        self.name = f"lpips-{net}"

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        _check_images(x, y)
        if x.min() < 0 or x.max() > 1 or y.min() < 0 or y.max() > 1:
            raise ValueError("LPIPS inputs must lie in [0, 1]; clamp or rescale the images first")
        with torch.no_grad():
            return self.model(x.float(), y.float(), normalize=True).flatten()
