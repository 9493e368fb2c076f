"""LoRA files: the community key layouts, read and written (issue 8, thesis §3.3.2).

Two layouts are written, both safetensors:

* **diffusers / PEFT** — ``unet.<module>.lora_A.weight`` (A, [r, k]) and ``unet.<module>.lora_B.weight``
  (B, [d, r]); ``text_encoder.<module>…`` for the text side. This layout has no per-module α, and
  readers (diffusers, PEFT) then assume α = r, so the scale α/r is **folded into lora_B** when
  writing: the file has exactly the saved LoRA's effect in any reader.
* **kohya** (sd-scripts, A1111, ComfyUI) — ``lora_unet_<module with "_" for ".">.lora_down.weight``
  (A), ``.lora_up.weight`` (B) and ``.alpha`` (α, a scalar); ``lora_te_…`` for the text encoder,
  e.g. ``lora_te_text_model_encoder_layers_0_self_attn_q_proj`` for a CLIP text model.

Read in addition: the older diffusers keys ``….lora.down.weight`` / ``….lora.up.weight``,
``…lora_linear_layer.down/up``, the attention-processor keys ``…attn1.processor.to_q_lora.down.weight``,
raw PEFT ``base_model.model.…`` keys, ``.alpha`` keys and diffusers' ``lora_adapter_metadata``;
kohya files for SD 1.x/2.x whose U-Net names use the original LDM layout
(``lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k``).

Kohya names are mapped back to modules through the model itself: every Linear/Conv2d name of the
target component is flattened the kohya way and looked up, which is exact (no guessing at which
"_" was a "."). A file none of whose keys fits the model is a ValueError listing the keys; a file
that only partly fits gives a warning listing what did not match (never a silent no-op). Weights
whose shapes do not fit (a LoRA for another model family) are a ValueError listing them.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..io import atomic_path, check_writable
from .embeddings import own_text_encoder, text_transformer
from .lora import LoRANetwork

__all__ = [
    "LORA_LAYOUTS",
    "kohya_name",
    "lora_state_dict",
    "save_lora",
    "read_lora_file",
    "detect_layout",
    "load_lora",
    "lora_components",
    "apply_lora",
    "parse_lora_spec",
]

LORA_LAYOUTS = ("diffusers", "kohya")
_KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
_KOHYA_COMPONENT = (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"),
                    ("lora_te_", "text_encoder"))
_DIFFUSERS_COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "transformer", "prior")
_UNSUPPORTED_PARTS = ("hada_", "lokr_", "dora_scale", "lora_magnitude_vector", "lora_mid", "lora_B.bias",
                      ".diff", "w_norm", "b_norm")
_LIST_LIMIT = 20


def kohya_name(component: str, module_name: str) -> str:
    """``lora_unet_down_blocks_0_…_attn2_to_k`` for ("unet", "down_blocks.0.….attn2.to_k")."""
    if component not in _KOHYA_PREFIX:
        raise ValueError(f"the kohya layout has no prefix for component {component!r} (only {sorted(_KOHYA_PREFIX)})")
    return _KOHYA_PREFIX[component] + module_name.replace(".", "_")


def _listing(items, limit: int = _LIST_LIMIT) -> str:
    items = sorted(items)
    more = f" … and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


# ------------------------------------------------------------------------------------- writing
def lora_state_dict(net: LoRANetwork, layout: str = "diffusers", dtype: torch.dtype | None = None
                    ) -> dict[str, Tensor]:
    """The tensors of ``net`` under ``layout`` ("diffusers" with α/r folded into lora_B, or "kohya")."""
    if layout not in LORA_LAYOUTS:
        raise ValueError(f"unknown LoRA layout {layout!r}; choose one of {LORA_LAYOUTS}")
    if len(net) == 0:
        raise ValueError("the LoRA has no adapters; nothing to save")
    out: dict[str, Tensor] = {}
    for component, module_name, _, adapter in net.items():
        a = adapter.down.weight.detach().float().cpu()
        b = adapter.up.weight.detach().float().cpu()
        if layout == "diffusers":
            base = f"{component}.{module_name}"
            out[f"{base}.lora_A.weight"] = a
            out[f"{base}.lora_B.weight"] = b * adapter.scale
        else:
            base = kohya_name(component, module_name)
            out[f"{base}.lora_down.weight"] = a
            out[f"{base}.lora_up.weight"] = b
            out[f"{base}.alpha"] = torch.tensor(adapter.alpha, dtype=torch.float32)
    if dtype is not None:
        out = {k: v.to(dtype) for k, v in out.items()}
    return {k: v.contiguous() for k, v in out.items()}


def save_lora(net: LoRANetwork, path: str | os.PathLike, layout: str = "diffusers", *,
              dtype: torch.dtype | None = None, metadata: Mapping[str, str] | None = None,
              overwrite: bool = False) -> Path:
    """Write ``net`` as a safetensors LoRA file in ``layout`` (atomically)."""
    from safetensors.torch import save_file

    path = check_writable(path, overwrite)
    if path.suffix != ".safetensors":
        raise ValueError(f"LoRA files are written as .safetensors, got {path.name}")
    state = lora_state_dict(net, layout, dtype)
    ranks = Counter(a.rank for _, _, _, a in net.items())
    alphas = Counter(a.alpha for _, _, _, a in net.items())
    meta = {
        "format": "pt",
        "condiff.lora": json.dumps({"name": net.name, "layout": layout, "components": net.components,
                                    "ranks": sorted(ranks), "modules": len(net)}),
    }
    if layout == "kohya":  # what sd-scripts writes; A1111/ComfyUI show it
        meta.update({"ss_network_module": "networks.lora", "ss_network_dim": str(ranks.most_common(1)[0][0]),
                     "ss_network_alpha": f"{alphas.most_common(1)[0][0]:g}"})
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


# ------------------------------------------------------------------------------------- reading
def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a LoRA file; ``.pt``/``.bin``/``.ckpt`` only via weights_only loading."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(path)), meta
    if path.suffix in (".pt", ".bin", ".ckpt", ".pth"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path} could not be read with torch.load(weights_only=True) ({err}); "
                             "convert it to safetensors") from None
        if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ValueError(f"{path} is not a flat dict of tensors (a LoRA state dict)")
        return dict(state), {}
    raise ValueError(f"unknown LoRA file type {path.suffix!r}; use .safetensors (or .pt/.bin)")


def detect_layout(keys) -> str:
    """"kohya" if the keys use ``lora_unet_``/``lora_te_`` names, else "diffusers"."""
    keys = list(keys)
    if keys and all(k.startswith(tuple(p for p, _ in _KOHYA_COMPONENT)) for k in keys):
        return "kohya"
    return "diffusers"


@dataclass
class _Entry:
    down: Tensor | None = None
    up: Tensor | None = None
    alpha: float | None = None
    keys: list[str] = field(default_factory=list)


# diffusers/PEFT key forms: (regex, how to name the module from the match)
_DIFFUSERS_PATTERNS = (
    (re.compile(r"(?P<mod>.+)\.lora_(?P<kind>A|B)\.weight"), None),
    (re.compile(r"(?P<mod>.+)\.lora\.(?P<kind>down|up)\.weight"), None),
    (re.compile(r"(?P<mod>.+)\.lora_linear_layer\.(?P<kind>down|up)\.weight"), None),
    (re.compile(r"(?P<mod>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<kind>down|up)\.weight"), "proc"),
)
_KIND = {"A": "down", "B": "up", "down": "down", "up": "up"}


def _split_component(key: str, default: str) -> tuple[str, str]:
    if key.startswith("base_model.model."):
        return default, key[len("base_model.model."):]
    head, _, rest = key.partition(".")
    if head in _DIFFUSERS_COMPONENTS and rest:
        return head, rest
    return default, key


def _parse_diffusers(state: Mapping[str, Tensor], default_component: str
                     ) -> tuple[dict[tuple[str, str], _Entry], list[str]]:
    entries: dict[tuple[str, str], _Entry] = defaultdict(_Entry)
    unparsed = []
    for key, value in state.items():
        component, rest = _split_component(key, default_component)
        if rest.endswith(".alpha"):
            e = entries[(component, rest[: -len(".alpha")])]
            e.alpha = float(value.float().item())
            e.keys.append(key)
            continue
        for pattern, how in _DIFFUSERS_PATTERNS:
            m = pattern.fullmatch(rest)
            if m:
                mod = m["mod"]
                if how == "proc":
                    mod = f"{mod}.{m['proj']}" + (".0" if m["proj"] == "to_out" else "")
                e = entries[(component, mod)]
                setattr(e, _KIND[m["kind"]], value)
                e.keys.append(key)
                break
        else:
            unparsed.append(key)
    return dict(entries), unparsed


def _metadata_alphas(meta: Mapping[str, str]) -> dict[str, tuple[float | None, dict[str, float]]]:
    """Per component: (lora_alpha, alpha_pattern) from diffusers' ``lora_adapter_metadata``."""
    raw = meta.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"the file's lora_adapter_metadata is not valid JSON ({err})") from None
    out: dict[str, tuple[float | None, dict[str, float]]] = {}
    for comp in _DIFFUSERS_COMPONENTS:
        alpha = data.get(f"{comp}.lora_alpha")
        pattern = data.get(f"{comp}.alpha_pattern") or {}
        if alpha is not None or pattern:
            out[comp] = (None if alpha is None else float(alpha), {str(k): float(v) for k, v in pattern.items()})
    if not out and ("lora_alpha" in data or "alpha_pattern" in data):  # metadata of a single model
        out[""] = (data.get("lora_alpha"), {str(k): float(v) for k, v in (data.get("alpha_pattern") or {}).items()})
    return out


def _ldm_unet_flat(flat: str, layers_per_block: int) -> str | None:
    """Original-LDM U-Net attention names (kohya files of SD 1.x/2.x) -> diffusers names, flattened."""
    n = layers_per_block + 1
    m = re.fullmatch(r"input_blocks_(\d+)_1_(.+)", flat)
    if m and int(m[1]) >= 1:
        i, j = divmod(int(m[1]) - 1, n)
        return f"down_blocks_{i}_attentions_{j}_{m[2]}" if j < layers_per_block else None
    m = re.fullmatch(r"middle_block_1_(.+)", flat)
    if m:
        return f"mid_block_attentions_0_{m[1]}"
    m = re.fullmatch(r"output_blocks_(\d+)_1_(.+)", flat)
    if m:
        i, j = divmod(int(m[1]), n)
        return f"up_blocks_{i}_attentions_{j}_{m[2]}"
    return None


def _parse_kohya(state: Mapping[str, Tensor], components: Mapping[str, nn.Module]
                 ) -> tuple[dict[tuple[str, str], _Entry], list[str]]:
    tables: dict[str, dict[str, str]] = {}
    for comp, root in components.items():
        tables[comp] = {name.replace(".", "_"): name for name, m in root.named_modules()
                        if name and isinstance(m, (nn.Linear, nn.Conv2d))}
    lpb = 2
    unet = components.get("unet")
    if unet is not None and hasattr(unet, "down_blocks"):
        lpb = len(unet.down_blocks[0].resnets)
    entries: dict[tuple[str, str], _Entry] = defaultdict(_Entry)
    unmatched = []
    for key, value in state.items():
        lora_name, _, part = key.partition(".")
        comp = next((c for p, c in _KOHYA_COMPONENT if lora_name.startswith(p)), None)
        prefix = next((p for p, _ in _KOHYA_COMPONENT if lora_name.startswith(p)), "")
        flat = lora_name[len(prefix):]
        table = tables.get(comp or "", {})
        module = table.get(flat)
        if module is None and comp == "unet":
            alt = _ldm_unet_flat(flat, lpb)
            module = table.get(alt) if alt else None
        if module is None or part not in ("lora_down.weight", "lora_up.weight", "alpha"):
            unmatched.append(key)
            continue
        e = entries[(comp, module)]
        e.keys.append(key)
        if part == "alpha":
            e.alpha = float(value.float().item())
        else:
            setattr(e, "down" if part == "lora_down.weight" else "up", value)
    return dict(entries), unmatched


def _fit_to_host(host: nn.Module, down: Tensor, up: Tensor) -> tuple[Tensor, Tensor] | str:
    """Reshape (A, B) for the host or return why they do not fit."""
    r = down.shape[0]
    if up.ndim < 2 or up.shape[1] != r:
        return f"lora_down has rank {r} but lora_up has shape {tuple(up.shape)}"
    if isinstance(host, nn.Linear):
        if down.ndim == 4 and down.shape[2:] == (1, 1) and up.ndim == 4 and up.shape[2:] == (1, 1):
            down, up = down[:, :, 0, 0], up[:, :, 0, 0]
        if down.ndim != 2 or up.ndim != 2:
            return f"a Linear layer cannot take LoRA weights of shapes {tuple(down.shape)}, {tuple(up.shape)}"
        if down.shape[1] != host.in_features or up.shape[0] != host.out_features:
            return (f"LoRA maps {down.shape[1]}->{up.shape[0]} but the layer is "
                    f"{host.in_features}->{host.out_features}")
        return down, up
    k = tuple(host.kernel_size)
    if down.ndim == 2 and k == (1, 1):
        down = down[:, :, None, None]
    if up.ndim == 2:
        up = up[:, :, None, None]
    if down.ndim != 4 or tuple(down.shape[2:]) != k or tuple(up.shape[2:]) != (1, 1):
        return f"a {k} Conv2d cannot take LoRA weights of shapes {tuple(down.shape)}, {tuple(up.shape)}"
    if down.shape[1] != host.in_channels or up.shape[0] != host.out_channels:
        return (f"LoRA maps {down.shape[1]}->{up.shape[0]} channels but the layer is "
                f"{host.in_channels}->{host.out_channels}")
    return down, up


def _pattern_alpha(module: str, pattern: Mapping[str, float]) -> float | None:
    for key, value in pattern.items():  # PEFT semantics: the key (a regex) matches a suffix of the name
        try:
            if re.fullmatch(rf"(.*\.)?({key})", module):
                return value
        except re.error:
            if module == key or module.endswith("." + key):
                return value
    return None


def load_lora(source: str | os.PathLike | Mapping[str, Tensor], components: Mapping[str, nn.Module], *,
              weight: float = 1.0, name: str | None = None, metadata: Mapping[str, str] | None = None,
              default_component: str = "unet") -> LoRANetwork:
    """Build an attached :class:`LoRANetwork` from a LoRA file (or state dict) of either layout.

    ``components``: ``{"unet": unet, "text_encoder": text_model}``; module names in the file are
    relative to these. Keys without a component prefix belong to ``default_component``.
    """
    if isinstance(source, Mapping):
        state, meta, label = dict(source), dict(metadata or {}), "the LoRA state dict"
    else:
        state, meta = read_lora_file(source)
        meta.update(metadata or {})
        label = str(source)
    if not state:
        raise ValueError(f"{label} holds no tensors")
    components = {k: v for k, v in components.items() if v is not None}
    unsupported = [k for k in state if any(p in k for p in _UNSUPPORTED_PARTS)]
    if unsupported:
        raise ValueError(
            f"{label} uses LoRA variants condiff does not implement (LoHa/LoKr/DoRA/LoCon-mid/bias): "
            f"{_listing(unsupported)}"
        )
    layout = detect_layout(state)
    if layout == "kohya":
        entries, unmatched = _parse_kohya(state, components)
    else:
        entries, unmatched = _parse_diffusers(state, default_component)
    meta_alphas = _metadata_alphas(meta) if layout == "diffusers" else {}
    net = LoRANetwork(name or (Path(label).stem if not isinstance(source, Mapping) else "lora"))
    problems = []
    modules = {comp: dict(root.named_modules()) for comp, root in components.items()}
    for (comp, module), e in sorted(entries.items()):
        host = modules.get(comp, {}).get(module) if module else None
        if not isinstance(host, (nn.Linear, nn.Conv2d)):
            unmatched.extend(e.keys)
            continue
        if e.down is None or e.up is None:
            have = [n for n, t in (("lora_down/A", e.down), ("lora_up/B", e.up)) if t is not None] or ["alpha"]
            problems.append(f"{comp}.{module}: has only {' and '.join(have)}")
            continue
        fitted = _fit_to_host(host, e.down.float(), e.up.float())
        if isinstance(fitted, str):
            problems.append(f"{comp}.{module}: {fitted}")
            continue
        down, up = fitted
        rank = down.shape[0]
        alpha = e.alpha
        if alpha is None and meta_alphas:
            comp_alpha, pattern = meta_alphas.get(comp, meta_alphas.get("", (None, {})))
            alpha = _pattern_alpha(module, pattern)
            alpha = comp_alpha if alpha is None else alpha
        adapter = net.add(comp, module, host, rank, alpha)
        with torch.no_grad():
            adapter.down.weight.copy_(down.to(adapter.down.weight))
            adapter.up.weight.copy_(up.to(adapter.up.weight))
    if problems:
        raise ValueError(f"{label} does not fit this model: {_listing(problems)}")
    if len(net) == 0:
        raise ValueError(
            f"no key of {label} matches a layer of this model ({sorted(components)}); unmatched keys: "
            f"{_listing(unmatched)}"
        )
    if unmatched:
        warnings.warn(f"{label}: {len(unmatched)} keys match no layer of this model and were ignored: "
                      f"{_listing(unmatched)}", stacklevel=2)
    return net.attach(weight)


# ------------------------------------------------------------------------------------- models
def lora_components(model: Any) -> dict[str, nn.Module]:
    """``{"unet": …, "text_encoder": …}`` of a LatentDiffusion (text side when it has a transformers model)."""
    out = {"unet": model.unet}
    te = getattr(model, "text_encoder", None)
    if te is not None:
        try:
            out["text_encoder"] = text_transformer(te)
        except ValueError:
            pass
    return out


def apply_lora(model: Any, path: str | os.PathLike, weight: float = 1.0) -> LoRANetwork:
    """Load a LoRA file onto a LatentDiffusion's U-Net (and text encoder), acting with ``weight``.

    A file with text-encoder keys first gives the model its own copy of the text encoder, so a
    text encoder shared with other models is not changed.
    """
    state, meta = read_lora_file(path)
    if any(k.startswith(("lora_te", "text_encoder.")) for k in state):
        own_text_encoder(model)
    return load_lora(state, lora_components(model), weight=weight, metadata=meta, name=Path(path).stem)


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """``"file.safetensors:0.7"`` -> ("file.safetensors", 0.7); no suffix means weight 1."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return spec, 1.0
