"""Feature extractors for distribution metrics, loaded from LOCAL weight files only.

A :class:`FeatureExtractor` maps images ``[B, 3, H, W]`` in [0, 1] to features ``[B, D]``. The
distribution metrics (:mod:`condiff.metrics.distribution`) are agnostic of which one made the
features; the name tells a report which numbers it may compare.

Built-in registry entries (:func:`get_feature_extractor`):

- ``"inception-fid"``: the TF-ported Inception v3 pool3 features (2048-d) that FID and KID are
  defined on (Heusel et al. 2017; Bińkowski et al. 2018), through torchmetrics (which uses
  torch-fidelity's architecture). Needs ``weights_path`` to torch-fidelity's weight file
  ``weights-inception-2015-12-05-6726825d.pth`` and the ``torch-fidelity`` package.
- ``"clip-vit-l14"``: CLIP ViT-L/14 image embeddings (Radford et al. 2021), the features of CMMD
  (Jayasumana et al. 2024), via ``transformers.CLIPVisionModelWithProjection`` from a local
  Hugging Face folder (``model_dir``, e.g. a copy of ``openai/clip-vit-large-patch14``); the
  architecture is checked so that numbers stay comparable with published ones.
- ``"clip-vision"``: the same loader for any CLIP vision checkpoint (no architecture check).

condiff's own evaluation encoder (DESIGN.md §5) registers itself with
:func:`register_feature_extractor` when it exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FeatureExtractor",
    "register_feature_extractor",
    "get_feature_extractor",
    "list_feature_extractors",
    "extract_features",
    "InceptionFIDFeatures",
    "CLIPImageFeatures",
    "INCEPTION_FID_WEIGHTS_FILE",
    "CLIP_MEAN",
    "CLIP_STD",
]

INCEPTION_FID_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's image normalisation (Radford et al. 2021)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@runtime_checkable
class FeatureExtractor(Protocol):
    """``extractor(images [B, 3, H, W] in [0, 1]) -> features [B, D]``; ``name`` identifies the network."""

    name: str

    def __call__(self, images: Tensor) -> Tensor: ...


def _check_images(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be an RGB batch [B, 3, H, W] in [0, 1], got {shape}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError("images must lie in [0, 1]; map [-1, 1] model outputs with (x + 1) / 2")
    return images


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {}


def register_feature_extractor(name: str, factory: Callable[..., FeatureExtractor], *,
                               overwrite: bool = False) -> None:
    """Make ``factory(**kw)`` available as ``get_feature_extractor(name, **kw)``."""
    if not name or not isinstance(name, str):
        raise ValueError(f"feature extractor name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"feature extractor {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = factory


def list_feature_extractors() -> list[str]:
    return sorted(_REGISTRY)


def get_feature_extractor(name: str, **kwargs) -> FeatureExtractor:
    """Build the registered extractor ``name`` with ``kwargs`` (e.g. ``weights_path=``, ``model_dir=``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown feature extractor {name!r}; registered: {list_feature_extractors()}")
    return _REGISTRY[name](**kwargs)


def extract_features(extractor: FeatureExtractor, images: Tensor | Iterable[Tensor], *,
                     batch_size: int = 32) -> Tensor:
    """Features ``[N, D]`` (float64, CPU) of all images, fed to ``extractor`` ``batch_size`` at a time.

    ``images`` is one tensor ``[N, 3, H, W]`` or an iterable of such batches (e.g. a loader).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if isinstance(images, Tensor):
        images = _check_images(images)
        batches: Iterable[Tensor] = images.split(batch_size)
    else:
        batches = images
    out = []
    with torch.no_grad():
        for batch in batches:
            out.append(extractor(_check_images(batch)).detach().to("cpu", torch.float64))
    if not out:
        raise ValueError("no images were given")
    return torch.cat(out)


# --------------------------------------------------------------------------- Inception (FID)


class InceptionFIDFeatures:
    """2048-d pool3 features of the FID Inception v3, from a local torch-fidelity weight file.

    Images in [0, 1] are quantised to uint8 (as FID is defined on 8-bit images) and resized to
    299×299 inside torchmetrics' ``NoTrainInceptionV3`` (antialiased bilinear).
    """

    name = "inception-fid"

    def __init__(self, weights_path: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        if weights_path is None:
            raise ValueError(f"the FID Inception needs weights_path=... pointing to torch-fidelity's "
                             f"{INCEPTION_FID_WEIGHTS_FILE}; condiff never downloads weights")
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"FID Inception weights not found at {path}: needs torch-fidelity's "
                f"{INCEPTION_FID_WEIGHTS_FILE} (released at github.com/toshas/torch-fidelity, v0.2.0) "
                "copied to this machine")
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            import torch_fidelity  # noqa: F401
        except ImportError as err:
            raise ImportError(f"the FID Inception needs the torch-fidelity package ({err}); install "
                              "it with `pip install torch-fidelity`") from err
        self.device = torch.device(device)
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(path)).to(self.device)

    def __call__(self, images: Tensor) -> Tensor:
        x = (_check_images(images).float() * 255.0).round().to(torch.uint8).to(self.device)
        with torch.no_grad():
            return self.net(x).reshape(x.shape[0], -1)


# --------------------------------------------------------------------------- CLIP


def _preprocess_settings(model_dir: Path, image_size: int) -> tuple[int, int, tuple, tuple]:
    """(resize shortest edge, crop size, mean, std) from ``preprocessor_config.json`` if present."""
    resize, crop, mean, std = image_size, image_size, CLIP_MEAN, CLIP_STD
    cfg_path = model_dir / "preprocessor_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        size = cfg.get("size", resize)
        resize = int(size.get("shortest_edge", resize)) if isinstance(size, dict) else int(size)
        c = cfg.get("crop_size", crop)
        crop = int(c.get("height", crop)) if isinstance(c, dict) else int(c)
        mean = tuple(cfg.get("image_mean", mean))
        std = tuple(cfg.get("image_std", std))
    return resize, crop, mean, std


class CLIPImageFeatures:
    """CLIP image embeddings (projection output) from a local Hugging Face model folder.

    Preprocessing follows CLIP's: resize the shorter side to the crop size (bicubic, antialiased —
    tensor resampling, so values differ slightly from PIL's), centre-crop, normalise with CLIP's
    mean/std (read from ``preprocessor_config.json`` when the folder has one). Embeddings are
    L2-normalised by default (as CMMD and CLIP score use them).
    """

    def __init__(self, model_dir: str | os.PathLike | None = None, *, normalize: bool = True,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 name: str = "clip-vision", require_vit_l14: bool = False):
        if model_dir is None:
            raise ValueError("CLIP features need model_dir=... pointing to a local Hugging Face CLIP "
                             "folder (config.json + model.safetensors); condiff never downloads weights")
        folder = Path(model_dir)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"no CLIP model at {folder}: the folder needs config.json and model.safetensors "
                "(e.g. a local copy of openai/clip-vit-large-patch14)")
        if not any((folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json",
                                                    "pytorch_model.bin")):
            raise FileNotFoundError(f"{folder} has config.json but no weights: needs model.safetensors")
        from transformers import CLIPVisionModelWithProjection

        # dtype applied afterwards: the keyword's name differs across transformers versions
        model = CLIPVisionModelWithProjection.from_pretrained(str(folder), local_files_only=True)
        cfg = model.config
        if require_vit_l14 and (cfg.patch_size, cfg.hidden_size, cfg.num_hidden_layers) != (14, 1024, 24):
            raise ValueError(f"{folder} is not CLIP ViT-L/14 (patch {cfg.patch_size}, width "
                             f"{cfg.hidden_size}, {cfg.num_hidden_layers} layers); CMMD is defined on "
                             "ViT-L/14, use get_feature_extractor('clip-vision', ...) for other CLIPs")
        self.device, self.dtype = torch.device(device), dtype
        self.model = model.to(self.device, dtype).eval()
        self.normalize, self.name = normalize, name
        self.resize, self.crop, mean, std = _preprocess_settings(folder, int(cfg.image_size))
        self.mean = torch.tensor(mean, dtype=dtype, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=dtype, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, images: Tensor) -> Tensor:
        x = _check_images(images).to(self.device, self.dtype)
        h, w = x.shape[-2:]
        s = self.resize / min(h, w)
        size = (max(self.crop, round(h * s)), max(self.crop, round(w * s)))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        top, left = (x.shape[-2] - self.crop) // 2, (x.shape[-1] - self.crop) // 2
        x = x[..., top:top + self.crop, left:left + self.crop]
        return (x - self.mean) / self.std

    def __call__(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            emb = self.model(pixel_values=self.preprocess(images)).image_embeds
        return F.normalize(emb, dim=-1) if self.normalize else emb


def _clip_vit_l14(**kwargs) -> CLIPImageFeatures:
    kwargs.setdefault("name", "clip-vit-l14")
    return CLIPImageFeatures(require_vit_l14=True, **kwargs)


register_feature_extractor("inception-fid", InceptionFIDFeatures)
register_feature_extractor("clip-vit-l14", _clip_vit_l14)
register_feature_extractor("clip-vision", CLIPImageFeatures)
