"""The model registry: built-in models by name, Stable Diffusion checkpoints by path.

``load_model("builtin")`` (the default everywhere) assembles condiff's own latent diffusion model
from the weights shipped in ``condiff/weights/``; ``load_model("/path/to/sd")`` hands a local
Stable Diffusion folder or single file to :mod:`condiff.models.sd_loader`. Both return a
:class:`~condiff.models.ldm.LatentDiffusion`, so every pipeline has one code path.

Built-in components live one folder each (``config.json`` with sha256 of every shard, the
safetensors shards, ``MODEL_CARD.md``); checksums are verified at load time. :data:`COMPONENT_ROLES`
says what each one is for (``condiff models list``).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..schedules import DiscreteSchedule
from .ldm import LatentDiffusion
from .weights import WeightsError, load_frozen, read_config

__all__ = [
    "WEIGHTS_DIR",
    "BUILTIN_MODELS",
    "COMPONENT_ROLES",
    "builtin_components",
    "component_role",
    "component_dir",
    "load_component",
    "load_model",
    "build_network",
    "model_summary",
    "builtin_text_encoder",
    "configure_cpu",
    "default_threads",
    "set_threads",
]

WEIGHTS_DIR = Path(os.environ.get("CONDIFF_WEIGHTS", Path(__file__).resolve().parent.parent / "weights"))

#: Names accepted by :func:`load_model` for the built-in world.
BUILTIN_MODELS = ("builtin",)


#: What each built-in component is for. Two image towers of the same architecture ship on purpose:
#: ``evalenc`` measures (every built-in metric) and may be retrained; ``unclip-embedder`` is the frozen
#: tower unCLIP's prior and decoder were trained on (named in their configs).
COMPONENT_ROLES = {
    "vae": "KL autoencoder (f=4) of the latent models",
    "ldm": "text-to-image latent U-Net (MiniLM cross-attention)",
    "ldm-inpaint": "inpainting latent U-Net (9 input channels)",
    "evalenc": "evaluation encoder condiff-evalenc (LiT vs. MiniLM): every built-in metric",
    "unclip-embedder": "unCLIP's image tower: frozen snapshot of condiff-evalenc of 2026-11-26",
    "classifier": "noisy style classifier (classifier guidance)",
    **{f"controlnet-{k}": f"ControlNet, {k} condition" for k in ("canny", "lineart", "softedge", "depth", "normal", "pose")},
    "cascade-base": "cascade base: 64×64 pixel U-Net",
    "cascade-sr": "cascade SR3 stage 64→128 (also unCLIP's upsampler)",
    "unclip-prior": "unCLIP prior: caption → image embedding",
    "unclip-decoder": "unCLIP decoder: image embedding → 64×64 picture",
    "personalization": "shipped experiment-3 results (LoRA, textual inversion)",
}


def component_role(name: str) -> str:
    return COMPONENT_ROLES.get(name, "")


def component_dir(name: str) -> Path:
    return WEIGHTS_DIR / name


def builtin_components() -> dict[str, bool]:
    """Every built-in component folder and whether its weights are present."""
    if not WEIGHTS_DIR.exists():
        return {}
    return {p.name: (p / "config.json").exists() for p in sorted(WEIGHTS_DIR.iterdir()) if p.is_dir()}


def build_network(config: dict[str, Any]) -> nn.Module:
    """Instantiate the network described by a component's config.json (no weights)."""
    kind = config.get("kind")
    net_cfg = config.get("network", {})
    if kind in ("unet", "inpaint-unet"):
        from ..nn.unet import UNet, UNetConfig

        return UNet(UNetConfig.from_dict(net_cfg))
    if kind == "autoencoder":
        from ..nn.autoencoder import AutoencoderConfig, AutoencoderKL

        return AutoencoderKL(AutoencoderConfig.from_dict(net_cfg))
    if kind == "controlnet":
        from ..nn.controlnet import ControlNet, ControlNetConfig

        return ControlNet(ControlNetConfig.from_dict(net_cfg))
    if kind == "image-encoder":
        from ..nn.image_encoder import ImageEncoder, ImageEncoderConfig

        return ImageEncoder(ImageEncoderConfig.from_dict(net_cfg))
    if kind == "classifier":
        from ..nn.classifier import NoisyClassifier
        from ..nn.unet import UNetConfig

        return NoisyClassifier(UNetConfig.from_dict(net_cfg), config["num_classes"])
    raise WeightsError(f"unknown component kind {kind!r} in config.json")


def load_component(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[nn.Module, dict]:
    """A built-in network with its weights (checksums verified) and its config."""
    folder = component_dir(name)
    if not (folder / "config.json").exists():
        known = [k for k, ok in builtin_components().items() if ok]
        raise ValueError(
            f"no built-in component {name!r} in {WEIGHTS_DIR}; available: {', '.join(known) or 'none'}"
        )
    config = read_config(folder)
    return load_frozen(build_network(config), folder, device=device, dtype=dtype), config


def _schedule(config: dict) -> DiscreteSchedule:
    s = config.get("schedule", {"name": "scaled_linear", "steps": 1000})
    return DiscreteSchedule.named(s["name"], int(s["steps"]))


@lru_cache(maxsize=2)
def builtin_text_encoder(max_length: int = 24):
    """The shared frozen MiniLM text encoder of the built-in models (loaded once)."""
    from ..nn.text_encoder import MiniLMTextEncoder

    return MiniLMTextEncoder(max_length=max_length)


def _load_builtin(device, dtype) -> LatentDiffusion:
    unet, ucfg = load_component("ldm", device, dtype)
    vae, vcfg = load_component("vae", device, dtype)
    inpaint = None
    if builtin_components().get("ldm-inpaint"):
        inpaint, _ = load_component("ldm-inpaint", device, dtype)
    text = builtin_text_encoder(int(ucfg.get("text_max_length", 24)))
    return LatentDiffusion(
        name="builtin",
        unet=unet,
        vae=vae,
        text_encoder=text,
        schedule=_schedule(ucfg),
        prediction=ucfg.get("prediction", "eps"),
        scaling_factor=float(vcfg.get("scaling_factor", 1.0)),
        image_size=int(ucfg.get("image_size", 128)),
        inpaint_unet=inpaint,
        info={"default_guidance": float(ucfg.get("default_guidance", 5.0)),
              "default_steps": int(ucfg.get("default_steps", 20))},
    )


def default_threads() -> int:
    """CPU threads for inference: ``OMP_NUM_THREADS`` when set, else the cores this process may use
    minus the one-minute load average (at least 1).

    On a shared 2-core machine under load, 2 threads took a median 19.7 s per built-in image against
    3.6 s with 1 thread: oversubscribed threads wait on each other.
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op CPU threads (``None``: :func:`default_threads`); returns the number set."""
    from ..validate import check_int

    n = default_threads() if threads is None else check_int("threads", threads, 1, 1024)
    torch.set_num_threads(n)
    return n


def configure_cpu(dtype: torch.dtype = torch.float32) -> None:
    """Turn off oneDNN (mkldnn) convolutions for fp32 CPU inference unless CONDIFF_ONEDNN=1.

    Half precision keeps oneDNN: PyTorch's native bf16/fp16 CPU convolutions are ~100× slower.

    Measured on the 2-core machine with the built-in model: with oneDNN the first image took 37 s
    (primitive creation for every new shape) and later calls with new shapes stalled again for ~3 s;
    with PyTorch's native kernels the first image takes 1.8 s and every call is steady.
    """
    if dtype in (torch.float16, torch.bfloat16):
        torch.backends.mkldnn.enabled = True
    elif os.environ.get("CONDIFF_ONEDNN", "0") != "1":
        torch.backends.mkldnn.enabled = False


def load_model(name_or_path: str = "builtin", device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, *, speed=None, **kwargs) -> LatentDiffusion:
    """Load a model by built-in name or local path (never from the network).

    On a CPU this calls :func:`configure_cpu` (oneDNN off for fp32; set CONDIFF_ONEDNN=1 to keep it).
    ``speed``: a :class:`condiff.acceleration.SpeedOptions` (e.g. ``FAST``, ``COMPILE``) applied
    after loading.
    Raises :class:`~condiff.errors.InputError` for a name that is not a string or path,
    :class:`~condiff.errors.DeviceError` for a device or dtype this machine lacks and
    :class:`~condiff.errors.ModelError` for a model that cannot be found or loaded.
    """
    from ..errors import InputError, ModelError
    from ..validate import check_device, check_dtype

    if speed is not None:
        from ..acceleration import accelerate

        return accelerate(load_model(name_or_path, device, dtype, **kwargs), speed)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise InputError(f"model must be a built-in name ({', '.join(BUILTIN_MODELS)}) or a path, "
                         f"got {type(name_or_path).__name__}")
    device = check_device(device)
    dtype = check_dtype(dtype, device)
    if device.type == "cpu":
        configure_cpu(dtype)
    if name_or_path in BUILTIN_MODELS:
        missing = [c for c in ("ldm", "vae") if not builtin_components().get(c)]
        if missing:
            raise ModelError(
                f"the built-in model's weights are missing ({', '.join(missing)} under {WEIGHTS_DIR}); "
                "reinstall condiff or train them with the recipes in recipes/"
            )
        return _load_builtin(device, dtype)
    from ..validate import check_model_path

    path = check_model_path(name_or_path)
    from .sd_loader import finetuned_metadata, load_finetuned_model

    if path.exists() and finetuned_metadata(path) is not None:  # a DreamBooth file: its base + the fine-tuned U-Net
        return load_finetuned_model(path, device=device, dtype=dtype)
    if path.exists():
        from .sd_loader import load_sd

        try:
            return load_sd(path, device=device, dtype=dtype, **kwargs)
        except (ValueError, KeyError, IndexError, EOFError) as err:
            if isinstance(err, ModelError) or isinstance(err, InputError):
                raise
            raise ModelError(f"cannot load model {path}: {' '.join(str(err).split())[:200]}") from err
    raise ModelError(
        f"unknown model {name_or_path!r}: not a built-in name ({', '.join(BUILTIN_MODELS)}) and no such file or "
        "folder; give a local Stable Diffusion folder or .safetensors file"
    )


def model_summary(model: LatentDiffusion) -> dict[str, Any]:
    def count(m):
        return sum(p.numel() for p in m.parameters()) if m is not None else 0

    return {
        "name": model.name,
        "prediction": model.prediction,
        "unet_params": count(model.unet),
        "vae_params": count(model.vae),
        "inpaint_unet": model.inpaint_unet is not None,
        "image_size": model.image_size,
    }
