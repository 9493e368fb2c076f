"""What is in a Stable Diffusion checkpoint: format, variant, prediction type, components, dtype.

Reads only tensor *headers* (names, shapes, dtypes; for safetensors without loading any data) and
config files, so ``condiff models inspect PATH`` is fast even for multi-GB files. The same
detection drives :func:`condiff.models.sd_loader.load_sd`.

Detection rules (all from the weights; nothing is downloaded):

* **format**: a folder with ``model_index.json`` or ``unet/`` is a diffusers pipeline folder; a folder
  with ``config.json`` and ControlNet tensors a diffusers ControlNet; a file with
  ``model.diffusion_model.*`` tensors a single-file SD checkpoint; a file with ``control_model.*``,
  ``input_hint_block.*`` or ``controlnet_cond_embedding.*`` tensors a ControlNet file.
* **family**: the text tower's layout (``cond_stage_model.transformer`` = CLIP = SD 1.x,
  ``cond_stage_model.model`` = OpenCLIP = SD 2.x); without a text tower the U-Net's context width
  (768 = SD 1.x, 1024 = SD 2.x); in folders the U-Net config's ``cross_attention_dim``, then the
  text encoder's activation (quick-GELU = CLIP = SD 1.x).
* **inpainting**: 9 U-Net input channels (4 latent + 1 mask + 4 masked-image latent).
* **prediction type**: folders: ``scheduler/scheduler_config.json``'s ``prediction_type``. Single
  files carry no such field, so in order: the ``prediction=`` override; safetensors metadata
  (``modelspec.prediction_type``, ``prediction_type``, ``parameterization``); a sidecar
  ``<name>.yaml`` with ``parameterization: "v"`` (the LDM config convention); the file name
  ("768" or "-v" → v, "512"/"base" → ε) for SD 2.x; else SD 1.x and inpainting → ε, other SD 2.x →
  v (the 768-v models are the common SD 2.x files; reported as a guess, override with
  ``prediction="eps"`` for a 512-base file).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .sd_configs import PREDICTION_NAMES, variant_name
from .sd_keymap import CONTROL_PREFIX, UNET_PREFIX, VAE_PREFIX
from .sd_text import text_layout

__all__ = [
    "TensorInfo", "ModelReport", "checkpoint_tensors", "component_files", "component_tensors",
    "detect_prediction", "family_from_context", "inspect_model", "checkpoint_kind", "SINGLE_FILE_SUFFIXES",
]

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_WEIGHT_NAMES = ("diffusion_pytorch_model", "model")
_DTYPE_NAMES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I64": "int64",
                "I32": "int32", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


# ============================================================ reading headers
def _unwrap_pickled(obj: Any, path: Path) -> Mapping[str, Any]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    return obj


def load_pickled_state(path: Path, mmap: bool = True) -> dict[str, Any]:
    """A ``.ckpt/.pt/.pth/.bin`` state dict through ``torch.load(weights_only=True)`` only."""
    import pickle

    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError) as err:
        if mmap and "mmap" in str(err):  # old (non-zip) torch format cannot be memory-mapped
            return load_pickled_state(path, mmap=False)
        raise ValueError(
            f"{path} cannot be loaded safely with torch.load(weights_only=True) ({err}). condiff never "
            "unpickles arbitrary objects; convert the file to .safetensors with a trusted tool"
        ) from err
    return {k: v for k, v in _unwrap_pickled(obj, path).items() if hasattr(v, "shape")}


def checkpoint_tensors(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensor names -> (shape, dtype) of one weight file, plus its safetensors metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                infos = {}
                for k in f.keys():
                    sl = f.get_slice(k)
                    infos[k] = TensorInfo(tuple(sl.get_shape()), _DTYPE_NAMES.get(sl.get_dtype(), sl.get_dtype()))
                return infos, dict(f.metadata() or {})
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"cannot read {path} as safetensors ({err}); the file is corrupted or truncated") from err
    if path.suffix in _PICKLE_SUFFIXES:
        state = load_pickled_state(path)
        return {k: TensorInfo(tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}, {}
    raise ValueError(f"unsupported weight file {path.name}: use .safetensors (preferred) or .ckpt/.pt/.pth/.bin")


def component_files(folder: str | Path) -> list[Path]:
    """The weight files of one diffusers component folder (sharded via ``*.index.json`` or not).

    safetensors is preferred over pickled ``.bin``; an fp32 file over an ``.fp16.`` variant.
    """
    folder = Path(folder)
    for base in _WEIGHT_NAMES:
        for suffix in (".safetensors", ".fp16.safetensors", ".bin", ".fp16.bin"):
            index = folder / f"{base}{suffix}.index.json"
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError) as err:
                    raise ValueError(f"{index} is not a valid shard index ({err})") from err
                files = [folder / name for name in sorted(set(weight_map.values()))]
                missing = [f.name for f in files if not f.is_file()]
                if missing:
                    raise FileNotFoundError(f"{index} lists shards that are missing: {missing}")
                return files
            single = folder / f"{base}{suffix}"
            if single.is_file():
                return [single]
    raise FileNotFoundError(
        f"no weights in {folder}: expected diffusion_pytorch_model.safetensors or model.safetensors "
        "(or a sharded *.safetensors.index.json)"
    )


def component_tensors(folder: str | Path) -> dict[str, TensorInfo]:
    infos: dict[str, TensorInfo] = {}
    for f in component_files(folder):
        infos.update(checkpoint_tensors(f)[0])
    return infos


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err


# ============================================================ detection
def family_from_context(dim: int | None) -> str | None:
    return {768: "sd1", 1024: "sd2"}.get(int(dim)) if dim is not None else None


def detect_prediction(family: str, in_channels: int, *, path: Path | None = None,
                      metadata: Mapping[str, str] | None = None, override: str | None = None) -> tuple[str, str]:
    """(prediction, source) for a single-file checkpoint; see the module docstring for the order."""
    if override is not None:
        if override not in PREDICTION_NAMES:
            raise ValueError(f"prediction={override!r} is not understood; use 'eps' or 'v'")
        return PREDICTION_NAMES[override], "override"
    for key in ("modelspec.prediction_type", "prediction_type", "parameterization"):
        value = (metadata or {}).get(key)
        if value:
            value = {"eps": "eps", "epsilon": "eps", "v": "v", "v_prediction": "v", "v-prediction": "v"}.get(value.lower())
            if value:
                return value, f"metadata {key}"
    if path is not None:
        for sidecar in (path.with_suffix(".yaml"), path.with_suffix(".yml")):
            if sidecar.is_file():
                m = re.search(r"parameterization\s*:\s*['\"]?(\w+)", sidecar.read_text(errors="replace"))
                if m:
                    return ("v" if m.group(1).lower() == "v" else "eps"), f"sidecar {sidecar.name}"
                return "eps", f"sidecar {sidecar.name} (no parameterization: ε is the LDM default)"
    if family == "sd2" and in_channels != 9 and path is not None:
        name = path.name.lower()
        if "768" in name or re.search(r"(^|[-_.])v([-_.]|$)|v[-_]?pred", name):
            return "v", "file name"
        if "512" in name or "base" in name:
            return "eps", "file name"
    if family == "sd2" and in_channels != 9:
        return "v", "guess: SD 2.x defaults to 768-v; pass prediction='eps' for a 512-base model"
    return "eps", "family default"


def checkpoint_kind(path: str | Path) -> str:
    """'diffusers-folder', 'diffusers-controlnet', 'single-file' or 'controlnet-file'."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such model path: {path}")
    if path.is_dir():
        if (path / "model_index.json").is_file() or (path / "unet").is_dir():
            return "diffusers-folder"
        cfg = _read_json(path / "config.json") or {}
        if cfg.get("_class_name", "").startswith("ControlNet") or "conditioning_embedding_out_channels" in cfg:
            return "diffusers-controlnet"
        raise ValueError(f"{path} is neither a diffusers pipeline folder (model_index.json, unet/) nor a ControlNet folder")
    keys = checkpoint_tensors(path)[0].keys()
    if any(k.startswith(UNET_PREFIX) for k in keys):
        if any(k.startswith(CONTROL_PREFIX) for k in keys):
            return "controlnet-file"
        return "single-file"
    if any(k.startswith((CONTROL_PREFIX, "input_hint_block.", "controlnet_cond_embedding.")) for k in keys):
        return "controlnet-file"
    raise ValueError(f"{path} holds neither model.diffusion_model.* nor ControlNet tensors: not an SD 1.x/2.x checkpoint")


@dataclass
class ModelReport:
    """What :func:`inspect_model` found (also stored in ``LatentDiffusion.info``)."""

    path: str
    kind: str
    family: str | None = None
    variant: str | None = None
    prediction: str | None = None
    prediction_source: str = ""
    components: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    dtypes: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [f"path:        {self.path}", f"format:      {self.kind}"]
        if self.family:
            lines.append(f"family:      {self.family}")
        if self.variant:
            lines.append(f"variant:     {self.variant}")
        if self.prediction:
            lines.append(f"prediction:  {self.prediction}  ({self.prediction_source})")
        lines.append("components:")
        for name, desc in self.components.items():
            extra = []
            if name in self.dtypes:
                extra.append(self.dtypes[name])
            if name in self.parameters:
                extra.append(f"{self.parameters[name] / 1e6:.1f}M params")
            lines.append(f"  {name:<13}{desc}" + (f"  [{', '.join(extra)}]" if extra else ""))
        lines.append("missing:     " + (", ".join(self.missing) if self.missing else "nothing"))
        lines += [f"note:        {n}" for n in self.notes]
        return "\n".join(lines)


def _dtype_summary(infos: Mapping[str, TensorInfo]) -> str:
    counts: dict[str, int] = {}
    for info in infos.values():
        if not info.dtype.startswith(("int", "uint", "bool", "I", "U")):
            counts[info.dtype] = counts.get(info.dtype, 0) + info.numel
    return "/".join(sorted(counts, key=lambda d: -counts[d])) or "none"


def _add(report: ModelReport, name: str, desc: str, infos: Mapping[str, TensorInfo]) -> None:
    report.components[name] = desc
    report.dtypes[name] = _dtype_summary(infos)
    report.parameters[name] = sum(i.numel for i in infos.values())


def _inspect_single_file(path: Path, prediction: str | None) -> ModelReport:
    infos, metadata = checkpoint_tensors(path)
    report = ModelReport(str(path), "single-file")
    groups = {
        "unet": {k: v for k, v in infos.items() if k.startswith(UNET_PREFIX)},
        "vae": {k: v for k, v in infos.items() if k.startswith(VAE_PREFIX)},
        "text_encoder": {k: v for k, v in infos.items() if k.startswith("cond_stage_model.")},
    }
    layout = text_layout(infos)
    first = infos.get(UNET_PREFIX + "input_blocks.0.0.weight")
    in_ch = first.shape[1] if first else 4
    cross = next((v.shape[1] for k, v in groups["unet"].items() if k.endswith("attn2.to_k.weight")), None)
    family = {"clip": "sd1", "openclip": "sd2"}.get(layout) or family_from_context(cross)
    if family is None:
        raise ValueError(f"{path}: cannot tell SD 1.x from SD 2.x (no text encoder, context width {cross}); "
                         "condiff supports the Stable Diffusion 1.x/2.x families")
    report.family = family
    report.prediction, report.prediction_source = detect_prediction(family, in_ch, path=path, metadata=metadata,
                                                                    override=prediction)
    report.variant = variant_name(family, in_ch, report.prediction)
    descs = {"unet": f"model.diffusion_model ({in_ch} input channels, context {cross})",
             "vae": "first_stage_model (KL autoencoder)",
             "text_encoder": {"clip": "cond_stage_model.transformer (CLIP ViT-L/14 layout)",
                              "openclip": "cond_stage_model.model (OpenCLIP layout, penultimate layer)"}.get(layout, "")}
    for name, group in groups.items():
        if group:
            _add(report, name, descs[name], group)
        else:
            report.missing.append(name)
    from .sd_tokenizer import tokenizer_source

    report.components["tokenizer"] = tokenizer_source(None)
    report.components["scheduler"] = ("betas stored in the checkpoint" if "betas" in infos
                                      else "shipped config (scaled-linear β, 1000 steps)")
    if sum(k.startswith("model_ema.") for k in infos) > 100:
        report.notes.append("contains EMA weights (model_ema.*); load_sd(..., ema=True) uses them")
    if any(k.startswith(CONTROL_PREFIX) for k in infos):
        report.notes.append("also contains a ControlNet (control_model.*)")
    return report


def _inspect_folder(path: Path, prediction: str | None) -> ModelReport:
    report = ModelReport(str(path), "diffusers-folder")
    index = _read_json(path / "model_index.json") or {}
    if index.get("_class_name"):
        report.notes.append(f"pipeline class {index['_class_name']}")
    unet_cfg = _read_json(path / "unet" / "config.json")
    text_cfg = _read_json(path / "text_encoder" / "config.json")
    sched_cfg = _read_json(path / "scheduler" / "scheduler_config.json")
    for name in ("unet", "vae", "text_encoder"):
        sub = path / name
        cfg = _read_json(sub / "config.json")
        if cfg is None:
            report.missing.append(name)
            continue
        try:
            infos = component_tensors(sub)
        except FileNotFoundError as err:
            report.missing.append(f"{name} weights ({err})")
            continue
        _add(report, name, cfg.get("_class_name") or cfg.get("architectures", ["?"])[0], infos)
    tok = path / "tokenizer"
    if (tok / "vocab.json").is_file() or (tok / "tokenizer.json").is_file():
        report.components["tokenizer"] = "tokenizer/ (folder)"
    else:
        from .sd_tokenizer import tokenizer_source

        report.missing.append("tokenizer (using " + tokenizer_source(None) + ")")
    in_ch = int((unet_cfg or {}).get("in_channels", 4))
    family = family_from_context((unet_cfg or {}).get("cross_attention_dim"))
    if family is None and text_cfg:
        family = "sd1" if text_cfg.get("hidden_act") == "quick_gelu" else "sd2"
    report.family = family or "sd1"
    if sched_cfg is not None:
        report.components["scheduler"] = sched_cfg.get("_class_name", "scheduler_config.json")
        pred = sched_cfg.get("prediction_type", "epsilon")
        if pred not in PREDICTION_NAMES:
            raise ValueError(f"{path}/scheduler: prediction_type {pred!r} is not supported")
        report.prediction, report.prediction_source = PREDICTION_NAMES[pred], "scheduler config"
    else:
        report.missing.append("scheduler (using the shipped scaled-linear schedule)")
        report.prediction, report.prediction_source = "eps", "family default (no scheduler config)"
    if prediction is not None:
        report.prediction, report.prediction_source = detect_prediction(report.family, in_ch, override=prediction)
    report.variant = variant_name(report.family, in_ch, report.prediction)
    for extra in ("safety_checker", "feature_extractor", "image_encoder"):
        if (path / extra).is_dir():
            report.notes.append(f"{extra}/ is present and ignored")
    return report


def _inspect_controlnet(path: Path, kind: str) -> ModelReport:
    report = ModelReport(str(path), kind)
    if path.is_dir():
        cfg = _read_json(path / "config.json") or {}
        infos = component_tensors(path)
        cross = cfg.get("cross_attention_dim")
        desc = "ControlNetModel (diffusers)"
    else:
        all_infos, _ = checkpoint_tensors(path)
        if any(k.startswith(CONTROL_PREFIX) for k in all_infos):
            infos = {k[len(CONTROL_PREFIX):]: v for k, v in all_infos.items() if k.startswith(CONTROL_PREFIX)}
        else:
            infos = dict(all_infos)
        cross = next((v.shape[1] for k, v in infos.items() if k.endswith("attn2.to_k.weight")), None)
        desc = "original ControlNet layout" if "input_hint_block.0.weight" in infos else "diffusers ControlNet layout"
    report.family = family_from_context(cross)
    _add(report, "controlnet", desc, infos)
    hint = infos.get("input_hint_block.0.weight") or infos.get("controlnet_cond_embedding.conv_in.weight")
    if hint is not None:
        report.notes.append(f"condition image channels: {hint.shape[1]}")
    return report


def inspect_model(path: str | Path, *, prediction: str | None = None) -> ModelReport:
    """Detect what a model path holds (see the module docstring); reads headers and configs only."""
    path = Path(path).expanduser()
    kind = checkpoint_kind(path)
    if kind == "diffusers-folder":
        return _inspect_folder(path, prediction)
    if kind == "single-file":
        return _inspect_single_file(path, prediction)
    return _inspect_controlnet(path, kind)
