"""Key maps between original LDM/CompVis checkpoints and diffusers (= condiff) state-dict names.

Stable Diffusion's single-file checkpoints keep the module names of the original latent-diffusion
code (Rombach et al. 2022, thesis §3.2.3): ``model.diffusion_model.*`` (U-Net), ``first_stage_model.*``
(KL autoencoder), ``cond_stage_model.*`` (text encoder, mapped in :mod:`condiff.models.sd_text`) and,
for ControlNets (Zhang et al. 2023, thesis §3.1.3), ``control_model.*``. condiff's networks use
diffusers' names, so these maps rename every tensor (and reshape the autoencoder's 1×1-conv
attention weights to linear ones). They were written from the published module layouts:

U-Net (``openaimodel.UNetModel``) with L = layers per level, n levels::

    time_embed.{0,2}                     time_embedding.linear_{1,2}
    input_blocks.0.0                     conv_in
    input_blocks.i.0 / .1  (i ≥ 1)       down_blocks.l.resnets.j / .attentions.j   l, j = divmod(i-1, L+1)
    input_blocks.i.0.op   (j = L)        down_blocks.l.downsamplers.0.conv
    middle_block.{0,1,2}                 mid_block.resnets.0, .attentions.0, .resnets.1
    output_blocks.i.0 / .1               up_blocks.l.resnets.j / .attentions.j    l, j = divmod(i, L+1)
    output_blocks.i.{1|2}.conv (j = L)   up_blocks.l.upsamplers.0.conv (index 2 when the level has attention)
    out.{0,2}                            conv_norm_out, conv_out
    label_emb…                           class_embedding…
    resnet: in_layers.{0,2} emb_layers.1 out_layers.{0,3} skip_connection
         -> norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut

Autoencoder (``diffusionmodules.model``): ``encoder.down.i.block.j`` -> ``encoder.down_blocks.i.resnets.j``,
``encoder.down.i.downsample.conv`` -> ``…downsamplers.0.conv``, ``decoder.up.k`` -> ``decoder.up_blocks.(n-1-k)``
(the LDM decoder counts levels from the bottom), ``mid.block_{1,2}`` -> ``mid_block.resnets.{0,1}``,
``mid.attn_1.{norm,q,k,v,proj_out}`` -> ``mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}``,
``norm_out`` -> ``conv_norm_out``, ``nin_shortcut`` -> ``conv_shortcut``.

ControlNet (``cldm.ControlNet``): the U-Net encoder part as above plus ``zero_convs.i.0`` ->
``controlnet_down_blocks.i``, ``middle_block_out.0`` -> ``controlnet_mid_block`` and the hint encoder
``input_hint_block.{0,2,…,2m}`` -> ``controlnet_cond_embedding.conv_in``, ``.blocks.{0..m-2}``, ``.conv_out``.

Each map is one table of (LDM prefix, diffusers prefix, kind) built from the structure (levels,
layers per level, attention levels) that is read off whichever side's keys are given, and used in
both directions. Unknown keys raise a ValueError that lists them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from torch import Tensor

__all__ = [
    "UNET_PREFIX", "VAE_PREFIX", "TEXT_PREFIX", "CONTROL_PREFIX",
    "UNetStructure",
    "unet_structure_from_ldm", "unet_structure_from_diffusers",
    "unet_ldm_to_diffusers", "unet_diffusers_to_ldm",
    "vae_ldm_to_diffusers", "vae_diffusers_to_ldm",
    "controlnet_ldm_to_diffusers", "controlnet_diffusers_to_ldm",
    "strip_prefix", "extract_ema",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model."
CONTROL_PREFIX = "control_model."

# sub-module renames inside one residual block (LDM name, diffusers name)
_UNET_RESNET = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut"))
_VAE_RESNET = (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"),
               ("nin_shortcut", "conv_shortcut"))
_VAE_ATTENTION = (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0"))
_KIND_RENAMES = {"unet_resnet": _UNET_RESNET, "vae_resnet": _VAE_RESNET, "vae_attention": _VAE_ATTENTION}


@dataclass(frozen=True)
class UNetStructure:
    """What a key map needs to know about a U-Net (or ControlNet encoder)."""

    levels: int
    layers_per_block: int
    attention: tuple[bool, ...]
    mid_block: bool = True


# ============================================================ generic prefix-table machinery
@dataclass(frozen=True)
class _Rule:
    ldm: str
    diffusers: str
    kind: str = "plain"  # plain | unet_resnet | vae_resnet | vae_attention


def _lookup(table: dict[str, _Rule], key: str) -> tuple[_Rule, str] | None:
    """Longest prefix of ``key`` (on a dot boundary) present in ``table``; returns (rule, rest)."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        rule = table.get(".".join(parts[:cut]))
        if rule is not None:
            return rule, ".".join(parts[cut:])
    return None


def _rename_rest(rest: str, kind: str, to_diffusers: bool) -> str | None:
    if kind == "plain":
        return rest
    for ldm, dif in _KIND_RENAMES[kind]:
        src, dst = (ldm, dif) if to_diffusers else (dif, ldm)
        if rest.startswith(src + "."):
            return dst + rest[len(src):]
    return None


def _reshape(value: Tensor, kind: str, rest: str, to_diffusers: bool) -> Tensor:
    """The LDM autoencoder's attention uses 1×1 convolutions; diffusers uses linear layers."""
    if kind == "vae_attention" and rest.endswith(".weight") and not rest.startswith(("norm.", "group_norm.")):
        if to_diffusers and value.ndim == 4:
            return value.reshape(value.shape[0], value.shape[1])
        if not to_diffusers and value.ndim == 2:
            return value.reshape(*value.shape, 1, 1)
    return value


def _apply(rules: Iterable[_Rule], state: Mapping[str, Tensor], to_diffusers: bool, what: str,
           passthrough: Callable[[str], bool] = lambda k: False) -> dict[str, Tensor]:
    table = {(r.ldm if to_diffusers else r.diffusers): r for r in rules}
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if passthrough(key):
            out[key] = value
            continue
        hit = _lookup(table, key)
        new_rest = _rename_rest(hit[1], hit[0].kind, to_diffusers) if hit else None
        if new_rest is None:
            unknown.append(key)
            continue
        rule, rest = hit
        dst = rule.diffusers if to_diffusers else rule.ldm
        out[f"{dst}.{new_rest}"] = _reshape(value, rule.kind, rest, to_diffusers)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" … ({len(unknown)} in all)" if len(unknown) > 8 else "")
        side = "original LDM" if to_diffusers else "diffusers"
        raise ValueError(
            f"{what}: {len(unknown)} key(s) do not fit the {side} layout: {shown}. "
            "Is this a Stable Diffusion 1.x/2.x checkpoint (SDXL and other families are not supported)?"
        )
    return out


def _indices(keys: Iterable[str], pattern: str) -> set[int]:
    rx = re.compile(pattern)
    return {int(m.group(1)) for k in keys if (m := rx.match(k))}


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def extract_ema(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Replace ``model.diffusion_model.*`` by the EMA copy ``model_ema.<name without dots>``.

    The LDM training code stores EMA weights under flattened names (``model_ema.diffusion_modelinput_blocks00weight``).
    Raises a ValueError when the checkpoint has no (complete) EMA copy.
    """
    out = dict(state)
    missing = []
    for key in state:
        if key.startswith(UNET_PREFIX):
            ema_key = "model_ema." + key[len("model."):].replace(".", "")
            if ema_key in state:
                out[key] = state[ema_key]
            else:
                missing.append(key)
    if missing:
        raise ValueError(f"ema=True but the checkpoint has no EMA copy of {len(missing)} U-Net tensors "
                         f"(e.g. {missing[0]}); load without ema=True")
    return {k: v for k, v in out.items() if not k.startswith("model_ema.")}


# ============================================================ U-Net
def unet_structure_from_ldm(keys: Iterable[str]) -> UNetStructure:
    """Levels, layers per level and attention levels of an LDM U-Net/ControlNet (prefix removed)."""
    keys = list(keys)
    blocks = _indices(keys, r"input_blocks\.(\d+)\.")
    if not blocks or 0 not in blocks:
        raise ValueError("no input_blocks.0 in the U-Net weights: not an LDM U-Net state dict")
    downs = sorted(_indices(keys, r"input_blocks\.(\d+)\.0\.op\."))
    last = max(blocks)
    layers = downs[0] - 1 if downs else last
    if layers < 1:
        raise ValueError(f"cannot read the U-Net layout from input_blocks (downsamplers at {downs})")
    levels = len(downs) + 1
    attention = []
    for level in range(levels):
        first = 1 + level * (layers + 1)
        attention.append(any(k.startswith(f"input_blocks.{first + j}.1.") for j in range(layers) for k in keys))
    mid = any(k.startswith("middle_block.") for k in keys)
    return UNetStructure(levels, layers, tuple(attention), mid)


def unet_structure_from_diffusers(keys: Iterable[str]) -> UNetStructure:
    """Same as :func:`unet_structure_from_ldm` for diffusers/condiff names."""
    keys = list(keys)
    levels = _indices(keys, r"down_blocks\.(\d+)\.")
    if not levels:
        raise ValueError("no down_blocks in the U-Net weights: not a diffusers U-Net state dict")
    n = max(levels) + 1
    layers = len(_indices(keys, r"down_blocks\.0\.resnets\.(\d+)\."))
    attention = tuple(any(k.startswith(f"down_blocks.{i}.attentions.") for k in keys) for i in range(n))
    mid = any(k.startswith("mid_block.") for k in keys)
    return UNetStructure(n, layers, attention, mid)


def _encoder_rules(s: UNetStructure) -> list[_Rule]:
    """Rules shared by the U-Net and the ControlNet (time embedding, contracting path, middle)."""
    L = s.layers_per_block
    rules = [
        _Rule("time_embed.0", "time_embedding.linear_1"),
        _Rule("time_embed.2", "time_embedding.linear_2"),
        _Rule("input_blocks.0.0", "conv_in"),
        _Rule("label_emb.0.0", "class_embedding.linear_1"),
        _Rule("label_emb.0.2", "class_embedding.linear_2"),
        _Rule("label_emb", "class_embedding"),
    ]
    for level in range(s.levels):
        for j in range(L + 1):
            i = 1 + level * (L + 1) + j
            if j < L:
                rules.append(_Rule(f"input_blocks.{i}.0", f"down_blocks.{level}.resnets.{j}", "unet_resnet"))
                if s.attention[level]:
                    rules.append(_Rule(f"input_blocks.{i}.1", f"down_blocks.{level}.attentions.{j}"))
            elif level < s.levels - 1:
                rules.append(_Rule(f"input_blocks.{i}.0.op", f"down_blocks.{level}.downsamplers.0.conv"))
    if s.mid_block:
        rules += [
            _Rule("middle_block.0", "mid_block.resnets.0", "unet_resnet"),
            _Rule("middle_block.1", "mid_block.attentions.0"),
            _Rule("middle_block.2", "mid_block.resnets.1", "unet_resnet"),
        ]
    return rules


def _unet_rules(s: UNetStructure) -> list[_Rule]:
    L = s.layers_per_block
    rules = _encoder_rules(s)
    for level in range(s.levels):
        attn = s.attention[s.levels - 1 - level]
        for j in range(L + 1):
            i = level * (L + 1) + j
            rules.append(_Rule(f"output_blocks.{i}.0", f"up_blocks.{level}.resnets.{j}", "unet_resnet"))
            if attn:
                rules.append(_Rule(f"output_blocks.{i}.1", f"up_blocks.{level}.attentions.{j}"))
            if j == L and level < s.levels - 1:
                rules.append(_Rule(f"output_blocks.{i}.{2 if attn else 1}.conv", f"up_blocks.{level}.upsamplers.0.conv"))
    rules += [_Rule("out.0", "conv_norm_out"), _Rule("out.2", "conv_out")]
    return rules


def unet_ldm_to_diffusers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """LDM U-Net state dict (``model.diffusion_model.`` prefix removed) -> diffusers/condiff names."""
    return _apply(_unet_rules(unet_structure_from_ldm(state)), state, True, "U-Net")


def unet_diffusers_to_ldm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers/condiff U-Net state dict -> LDM names (without the ``model.diffusion_model.`` prefix)."""
    return _apply(_unet_rules(unet_structure_from_diffusers(state)), state, False, "U-Net")


# ============================================================ autoencoder
def _vae_levels(keys: Iterable[str], to_diffusers: bool) -> int:
    pattern = r"encoder\.down\.(\d+)\." if to_diffusers else r"encoder\.down_blocks\.(\d+)\."
    found = _indices(keys, pattern)
    if not found:
        raise ValueError("no encoder down blocks in the autoencoder weights: not a KL autoencoder state dict")
    return max(found) + 1


def _vae_rules(n: int) -> list[_Rule]:
    same = ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out", "quant_conv", "post_quant_conv")
    rules = [_Rule(k, k) for k in same]
    for part in ("encoder", "decoder"):
        rules += [
            _Rule(f"{part}.norm_out", f"{part}.conv_norm_out"),
            _Rule(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", "vae_resnet"),
            _Rule(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", "vae_resnet"),
            _Rule(f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", "vae_attention"),
        ]
    for i in range(n):
        # block indices are bounded by the checkpoint; a generous range costs nothing
        for j in range(8):
            rules.append(_Rule(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", "vae_resnet"))
            rules.append(_Rule(f"decoder.up.{n - 1 - i}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}", "vae_resnet"))
        rules.append(_Rule(f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv"))
        rules.append(_Rule(f"decoder.up.{n - 1 - i}.upsample.conv", f"decoder.up_blocks.{i}.upsamplers.0.conv"))
    return rules


def vae_ldm_to_diffusers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """LDM autoencoder state dict (``first_stage_model.`` removed) -> diffusers/condiff names.

    Loss-only tensors of training checkpoints (``loss.*``) are dropped.
    """
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}
    return _apply(_vae_rules(_vae_levels(state, True)), state, True, "autoencoder")


def vae_diffusers_to_ldm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers/condiff autoencoder state dict -> LDM names (1×1-conv attention weights)."""
    return _apply(_vae_rules(_vae_levels(state, False)), state, False, "autoencoder")


# ============================================================ ControlNet
def _hint_convs(keys: Iterable[str], to_diffusers: bool) -> int:
    if to_diffusers:
        return len(_indices(keys, r"input_hint_block\.(\d+)\.weight"))
    return 2 + len(_indices(keys, r"controlnet_cond_embedding\.blocks\.(\d+)\.weight"))


def _controlnet_rules(s: UNetStructure, hint_convs: int) -> list[_Rule]:
    rules = _encoder_rules(s)
    n_skips = 1 + s.levels * s.layers_per_block + s.levels - 1
    rules += [_Rule(f"zero_convs.{i}.0", f"controlnet_down_blocks.{i}") for i in range(n_skips)]
    rules.append(_Rule("middle_block_out.0", "controlnet_mid_block"))
    for k in range(hint_convs):
        name = "conv_in" if k == 0 else "conv_out" if k == hint_convs - 1 else f"blocks.{k - 1}"
        rules.append(_Rule(f"input_hint_block.{2 * k}", f"controlnet_cond_embedding.{name}"))
    return rules


def controlnet_ldm_to_diffusers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original ControlNet state dict (``control_model.`` removed) -> diffusers/condiff names."""
    s = unet_structure_from_ldm(state)
    return _apply(_controlnet_rules(s, _hint_convs(state, True)), state, True, "ControlNet")


def controlnet_diffusers_to_ldm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers/condiff ControlNet state dict -> original names (without ``control_model.``)."""
    s = unet_structure_from_diffusers(state)
    return _apply(_controlnet_rules(s, _hint_convs(state, False)), state, False, "ControlNet")
