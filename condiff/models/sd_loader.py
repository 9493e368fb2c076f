"""Load Stable Diffusion 1.x/2.x checkpoints and ControlNets from local files into condiff's networks.

``load_sd(path)`` returns a :class:`condiff.models.ldm.LatentDiffusion` (latent diffusion, thesis
§3.2.3) whose U-Net and autoencoder are condiff's own (:mod:`condiff.nn`), whose text encoder is a
``transformers.CLIPTextModel`` (:mod:`condiff.models.sd_text`) and whose schedule is a
:class:`condiff.schedules.DiscreteSchedule`. diffusers is never imported. Accepted inputs:

* a **diffusers folder** (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, each
  with ``config.json`` and safetensors weights, sharded with ``*.index.json`` or not; pickled ``.bin``
  files are read with ``torch.load(weights_only=True)``);
* a **single file** with original LDM keys (``model.diffusion_model.*``, ``first_stage_model.*``,
  ``cond_stage_model.*``), ``.safetensors`` (preferred) or ``.ckpt``/``.pt`` through
  ``torch.load(weights_only=True)`` only. Configs come from the tensor shapes and the shipped
  family configs (:mod:`condiff.models.sd_configs`); the tokenizer from condiff's shipped CLIP
  vocabulary; the variant and prediction type are detected as :mod:`condiff.models.inspect` says
  (override with ``prediction=``).

``load_controlnet(path)`` loads a ControlNet (Zhang et al. 2023, thesis §3.1.3) from a diffusers
folder, a diffusers-named file or an original ``control_model.*`` file into
:class:`condiff.nn.controlnet.ControlNet`.

The network is never contacted: the offline flags are set before ``transformers`` is used, and
the tests run every loader inside :func:`condiff.models.offline.no_network`.

Inpainting checkpoints (9 input channels) load with that U-Net as both ``unet`` and
``inpaint_unet``; ``inpaint=PATH`` attaches the inpainting U-Net of a second checkpoint of the
same family to a normal model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..nn.autoencoder import AutoencoderConfig, AutoencoderKL
from ..nn.controlnet import ControlNet, ControlNetConfig
from ..nn.unet import UNet, UNetConfig
from .inspect import (
    ModelReport, checkpoint_kind, component_files, family_from_context, inspect_model, load_pickled_state,
)
from .ldm import LatentDiffusion
from .offline import set_offline_env
from .sd_configs import (
    controlnet_config_from_ldm, get_variant, schedule_from_ldm_buffers, schedule_from_scheduler_config,
    unet_config_from_ldm, vae_config_from_ldm,
)
from .sd_keymap import (
    CONTROL_PREFIX, UNET_PREFIX, VAE_PREFIX, controlnet_diffusers_to_ldm, controlnet_ldm_to_diffusers,
    extract_ema, strip_prefix, unet_ldm_to_diffusers, vae_ldm_to_diffusers,
)
from .sd_text import (
    OPENCLIP_PREFIX, SDTextEncoder, build_text_model, clip_state_from_ldm, openclip_to_transformers,
    text_config_from_weights, text_layout,
)
from .sd_tokenizer import load_clip_tokenizer

__all__ = ["load_sd", "load_controlnet", "load_state_file", "load_component_state", "load_weights_into",
           "FINETUNE_KIND", "finetuned_metadata", "apply_finetuned_weights", "load_finetuned_model"]

# names of the deprecated diffusers attention layout inside the autoencoder
_LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


# ============================================================ reading tensors
def load_state_file(path: str | Path) -> dict[str, Tensor]:
    """All tensors of one weight file (safetensors, or pickled through ``weights_only=True``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"cannot read {path} as safetensors ({err}); the file is corrupted or truncated") from err
    return load_pickled_state(path)


def load_component_state(folder: str | Path) -> dict[str, Tensor]:
    """The state dict of one diffusers component folder (all shards)."""
    state: dict[str, Tensor] = {}
    for f in component_files(folder):
        state.update(load_state_file(f))
    return state


# Same steps as weights.read_config, other contract: a diffusers folder's errors are FileNotFoundError/ValueError.
def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}; the diffusers folder is incomplete")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err


def load_weights_into(module: nn.Module, state: Mapping[str, Tensor], what: str, dtype: torch.dtype | None = None) -> nn.Module:
    """Strict load with a clear error: missing, unexpected and mis-shaped tensors are all listed.

    ``module`` may live on the meta device; its parameters are then replaced by the given tensors.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
             if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                parts.append(f"{label} ({len(items)}): " + ", ".join(items[:6]) + (" …" if len(items) > 6 else ""))
        raise ValueError(f"{what} weights do not fit the network: " + "; ".join(parts))
    cast = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state.items()}
    module.load_state_dict(cast, strict=True, assign=True)
    return module


def _on_meta(factory):
    with torch.device("meta"):
        return factory()


def build_unet(config: Mapping[str, Any], state: Mapping[str, Tensor], dtype: torch.dtype) -> UNet:
    cfg = UNetConfig.from_diffusers_config(dict(config))
    return load_weights_into(_on_meta(lambda: UNet(cfg)), state, "U-Net", dtype).eval()


def build_vae(config: Mapping[str, Any], state: Mapping[str, Tensor], dtype: torch.dtype) -> AutoencoderKL:
    cfg = AutoencoderConfig.from_diffusers_config(dict(config))
    renamed = {}
    for k, v in state.items():
        parts = k.split(".")
        if ".mid_block.attentions." in k and parts[-2] in _LEGACY_VAE_ATTENTION:
            parts[-2] = _LEGACY_VAE_ATTENTION[parts[-2]]
            k = ".".join(parts)
            if v.ndim == 4:
                v = v.reshape(v.shape[0], v.shape[1])
        renamed[k] = v
    return load_weights_into(_on_meta(lambda: AutoencoderKL(cfg)), renamed, "autoencoder", dtype).eval()


def _shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _text_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    # half-precision matmuls are slow or missing on many CPUs; the context is cast to the U-Net dtype anyway
    return torch.float32 if device.type == "cpu" and dtype == torch.float16 else dtype


# ============================================================ Stable Diffusion
def _load_folder(path: Path, report: ModelReport, dtype: torch.dtype, device: torch.device,
                 want_text: bool, tokenizer: str | Path | None, clip_skip: int) -> dict[str, Any]:
    unet_cfg = _read_config(path / "unet" / "config.json")
    vae_cfg = _read_config(path / "vae" / "config.json")
    parts: dict[str, Any] = {
        "unet": build_unet(unet_cfg, load_component_state(path / "unet"), dtype),
        "vae": build_vae(vae_cfg, load_component_state(path / "vae"), dtype),
        "scaling_factor": float(vae_cfg.get("scaling_factor", 0.18215)),
    }
    sched_path = path / "scheduler" / "scheduler_config.json"
    if sched_path.is_file():
        parts["schedule"], _ = schedule_from_scheduler_config(_read_config(sched_path))
    else:
        parts["schedule"], _ = schedule_from_scheduler_config(get_variant(report.variant).scheduler)
    f = 2 ** (len(vae_cfg.get("block_out_channels", (1,) * 4)) - 1)
    parts["image_size"] = int(unet_cfg.get("sample_size") or 64) * f
    if want_text:
        text_dir = path / "text_encoder"
        text_cfg = _read_config(text_dir / "config.json")
        model = build_text_model(text_cfg, load_component_state(text_dir), dtype=_text_dtype(dtype, device))
        tok_dir = Path(tokenizer) if tokenizer is not None else path / "tokenizer"
        has_tok = (tok_dir / "vocab.json").is_file() or (tok_dir / "tokenizer.json").is_file()
        pad = None if has_tok else get_variant(report.variant).pad_token
        tok = load_clip_tokenizer(tok_dir if has_tok else None, pad_token=pad)
        parts["text_encoder"] = SDTextEncoder(model, tok, skip_layers=clip_skip, name=report.family or "clip")
    return parts


def _load_single_file(path: Path, report: ModelReport, dtype: torch.dtype, device: torch.device,
                      want_text: bool, tokenizer: str | Path | None, clip_skip: int, ema: bool) -> dict[str, Any]:
    state = load_state_file(path)
    if ema:
        state = extract_ema(state)
    variant = get_variant(report.variant)
    unet_ldm = strip_prefix(state, UNET_PREFIX)
    unet_cfg = unet_config_from_ldm(_shapes(unet_ldm), report.family, variant)
    parts: dict[str, Any] = {"unet": build_unet(unet_cfg, unet_ldm_to_diffusers(unet_ldm), dtype)}
    del unet_ldm
    vae_ldm = strip_prefix(state, VAE_PREFIX)
    if not vae_ldm:
        raise ValueError(f"{path} has no autoencoder (first_stage_model.*); condiff needs a complete SD checkpoint")
    parts["vae"] = build_vae(vae_config_from_ldm(_shapes(vae_ldm), variant), vae_ldm_to_diffusers(vae_ldm), dtype)
    parts["scaling_factor"] = float(variant.vae["scaling_factor"])
    parts["schedule"] = schedule_from_ldm_buffers(state)
    if parts["schedule"] is None:
        parts["schedule"], _ = schedule_from_scheduler_config(variant.scheduler)
    parts["image_size"] = variant.image_size
    if want_text:
        layout = text_layout(state)
        if layout is None:
            raise ValueError(f"{path} has no text encoder (cond_stage_model.*); pass text_encoder=False to load without one")
        if layout == "clip":
            text_state = clip_state_from_ldm(state)
        else:
            oc = strip_prefix(state, OPENCLIP_PREFIX)
            n = len({k.split(".")[2] for k in oc if k.startswith("transformer.resblocks.")})
            text_state = openclip_to_transformers(oc, keep_layers=n - variant.text_skip_layers)
        text_cfg = text_config_from_weights(_shapes(text_state), layout)
        model = build_text_model(text_cfg, text_state, dtype=_text_dtype(dtype, device))
        tok = load_clip_tokenizer(tokenizer, pad_token=variant.pad_token)
        parts["text_encoder"] = SDTextEncoder(model, tok, skip_layers=clip_skip, name=layout)
    return parts


def load_sd(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    prediction: str | None = None,
    text_encoder: bool = True,
    tokenizer: str | Path | None = None,
    clip_skip: int = 0,
    ema: bool = False,
    inpaint: str | Path | None = None,
) -> LatentDiffusion:
    """Load a Stable Diffusion 1.x/2.x model (diffusers folder or single file) as a LatentDiffusion.

    Args:
        path: a diffusers folder or a ``.safetensors``/``.ckpt`` single file.
        device, dtype: where and in which precision the U-Net and autoencoder live (fp32, fp16,
            bf16). ``LatentDiffusion.decode`` retries a NaN/inf fp16 decode in fp32.
        prediction: "eps" or "v" to override the detected prediction type.
        text_encoder: False skips the text tower (e.g. for image-only use).
        tokenizer: a folder with ``vocab.json`` + ``merges.txt`` to use instead of the default.
        clip_skip: use the hidden state this many layers before the text encoder's last.
        ema: single files with both weights: use the EMA copy (``model_ema.*``).
        inpaint: a second checkpoint whose 9-channel U-Net becomes ``inpaint_unet``.
    """
    set_offline_env()
    path = Path(path).expanduser()
    if finetuned_metadata(path) is not None:  # a DreamBooth file: its base model + the fine-tuned U-Net
        return load_finetuned_model(path, device, dtype)
    device = torch.device(device)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32, float16 or bfloat16, got {dtype}")
    report = inspect_model(path, prediction=prediction)
    if report.kind == "diffusers-folder":
        parts = _load_folder(path, report, dtype, device, text_encoder, tokenizer, clip_skip)
    elif report.kind == "single-file" or (report.kind == "controlnet-file" and report.components.get("unet")):
        parts = _load_single_file(path, report, dtype, device, text_encoder, tokenizer, clip_skip, ema)
    else:
        raise ValueError(f"{path} is a ControlNet ({report.kind}); load it with load_controlnet and pass the base model")
    if report.prediction not in ("eps", "v", "x0"):
        raise ValueError(f"prediction type {report.prediction!r} is not supported for Stable Diffusion; use 'eps' or 'v'")
    unet = parts["unet"]
    inpaint_unet = unet if unet.config.in_channels == 9 else None
    if inpaint is not None:
        other = load_sd(inpaint, device, dtype, text_encoder=False)
        if other.inpaint_unet is None:
            raise ValueError(f"inpaint={inpaint} is not an inpainting checkpoint (its U-Net has "
                             f"{other.unet.config.in_channels} input channels, not 9)")
        if other.unet.config.cross_attention_dim != unet.config.cross_attention_dim:
            raise ValueError(f"inpaint={inpaint} belongs to another model family than {path} (context width "
                             f"{other.unet.config.cross_attention_dim} vs {unet.config.cross_attention_dim})")
        inpaint_unet = other.inpaint_unet
    info = report.to_dict()
    info.update(dtype=str(dtype).removeprefix("torch."), device=str(device))
    model = LatentDiffusion(
        name=path.name, unet=unet, vae=parts["vae"], text_encoder=parts.get("text_encoder"),
        schedule=parts["schedule"], prediction=report.prediction, scaling_factor=parts["scaling_factor"],
        image_size=parts["image_size"], inpaint_unet=inpaint_unet, use_context_mask=False, info=info,
    )
    return model.to(device=device).eval()


# ============================================================ ControlNet
def load_controlnet(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    family: str | None = None,
    base: LatentDiffusion | None = None,
) -> ControlNet:
    """Load a ControlNet: diffusers folder, diffusers-named file, or original ``control_model.*`` file.

    Single files carry no config: it is read off the shapes; the attention-head rule needs the
    family ("sd1"/"sd2"), detected from the context width (768/1024), else taken from ``family``
    or from the ``base`` model it will drive.
    """
    set_offline_env()
    path = Path(path).expanduser()
    kind = checkpoint_kind(path)
    if kind == "diffusers-controlnet":
        cfg = ControlNetConfig.from_diffusers_config(_read_config(path / "config.json"))
        state = load_component_state(path)
    elif kind == "controlnet-file":
        state = load_state_file(path)
        if any(k.startswith(CONTROL_PREFIX) for k in state):
            state = strip_prefix(state, CONTROL_PREFIX)
        ldm = state if "input_hint_block.0.weight" in state else controlnet_diffusers_to_ldm(state)
        shapes = _shapes(ldm)
        cross = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), None)
        fam = family_from_context(cross) or family or (base.info.get("family") if base is not None else None)
        if fam is None:
            raise ValueError(f"{path}: cannot tell the model family from a context width of {cross}; "
                             "pass family='sd1' or 'sd2' (or base=the model it drives)")
        cfg = ControlNetConfig.from_diffusers_config(controlnet_config_from_ldm(shapes, fam))
        if ldm is state:
            state = controlnet_ldm_to_diffusers(ldm)
    else:
        raise ValueError(f"{path} is a Stable Diffusion model ({kind}), not a ControlNet; use load_sd")
    net = load_weights_into(_on_meta(lambda: ControlNet(cfg)), state, "ControlNet", dtype)
    if base is not None and base.unet.config.cross_attention_dim != cfg.unet.cross_attention_dim:
        raise ValueError(f"this ControlNet expects context width {cfg.unet.cross_attention_dim} but the base model "
                         f"has {base.unet.config.cross_attention_dim}; it belongs to another SD family")
    return net.to(device=device).eval()


# ============================================================ fine-tuned U-Nets (DreamBooth files)
FINETUNE_KIND = "dreambooth"  # metadata ``condiff.kind`` of condiff.personalize.save_finetuned_weights' files


def finetuned_metadata(path: str | Path) -> dict[str, str] | None:
    """The metadata of a condiff fine-tuned-weights file (``unet.*`` [+ ``text_encoder.*``] keys,
    ``condiff.kind = "dreambooth"``, ``condiff.base`` naming the base model), else None."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # unreadable: the ordinary loaders report it
        return None
    return meta if meta.get("condiff.kind") == FINETUNE_KIND else None


def apply_finetuned_weights(model: LatentDiffusion, path: str | Path, text_module=None) -> None:
    """Put a fine-tuned-weights file into ``model``: the U-Net (a full copy, or a weight difference
    added to the model's own, :mod:`condiff.models.weight_delta`) and, when the file holds one and
    ``text_module(model.text_encoder)`` finds its transformer, the text encoder. Strict per part."""
    from safetensors.torch import load_file

    from .weight_delta import decode_delta

    state = load_file(str(path))
    parts: dict[str, dict[str, Tensor]] = {"unet": {}, "text_encoder": {}}
    for k, v in state.items():
        comp, _, rest = k.partition(".")
        if comp not in parts:
            raise ValueError(f"{path}: unexpected key {k!r} (keys must start with 'unet.' or 'text_encoder.')")
        parts[comp][rest] = v
    if not parts["unet"]:
        raise ValueError(f"{path} holds no U-Net weights")
    if (finetuned_metadata(path) or {}).get("condiff.delta"):
        try:
            parts["unet"] = decode_delta(parts["unet"], model.unet.state_dict())
        except KeyError as err:
            raise ValueError(f"{path} is a weight difference for another U-Net: {err.args[0]}") from None
    model.unet.load_state_dict(parts["unet"], strict=True)
    if parts["text_encoder"]:
        if text_module is None:
            raise ValueError(f"{path} also holds text-encoder weights; load it with condiff.personalize.load_finetuned_weights")
        text_module(model.text_encoder).load_state_dict(parts["text_encoder"], strict=True)


def load_finetuned_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                         base: str | None = None) -> LatentDiffusion:
    """A fine-tuned-weights file as a model: its base (``base``, else the one its metadata names: a
    built-in name or a Stable Diffusion path) loaded through the registry, the fine-tune put in."""
    from ..errors import ModelError
    from .registry import load_model

    path = Path(path)
    meta = finetuned_metadata(path)
    if meta is None:
        raise ModelError(f"{path} is not a condiff fine-tuned-weights file (metadata condiff.kind={FINETUNE_KIND!r})")
    spec = base or meta.get("condiff.base") or meta.get("condiff.model")
    if not spec:
        raise ModelError(f"{path.name} does not name its base model; load the base, then "
                         "condiff.personalize.load_finetuned_weights")
    try:
        model = load_model(spec, device=device, dtype=dtype)
    except ValueError as err:
        raise ModelError(f"{path.name} fine-tunes {spec!r}, which cannot be loaded here ({str(err).splitlines()[0]}); "
                         "put that model back at its path") from None
    try:
        from ..personalize.embeddings import text_transformer
    except ImportError:  # pragma: no cover
        text_transformer = None
    try:
        apply_finetuned_weights(model, path, text_module=text_transformer)
    except (ValueError, RuntimeError) as err:
        raise ModelError(f"{path.name} does not fit its base {spec!r}: {str(err).splitlines()[0]}") from None
    model.name = f"{model.name}+{path.stem}"
    model.info = {**model.info, "finetune": str(path)}
    return model
