"""Stable Diffusion's text encoders τ_θ(y) (thesis §3.2.3, eqs. 3.11–3.13) through ``transformers``.

* SD 1.x: OpenAI CLIP ViT-L/14 text tower; the cross-attention context is its last hidden state
  (after the final LayerNorm), 77 × 768.
* SD 2.x: the OpenCLIP ViT-H/14 text tower; the context is the hidden state of the *penultimate* of
  its 24 residual blocks, passed through the final LayerNorm, 77 × 1024. condiff builds it as a
  ``transformers.CLIPTextModel`` with 23 layers (activation GELU instead of quick-GELU), which is
  exactly that computation, so the 24th block is never run. Diffusers folders of SD 2.x already
  store this 23-layer model.

Single-file checkpoints store the tower under ``cond_stage_model.``:

* SD 1.x ``cond_stage_model.transformer.<transformers names>`` (older files lack ``text_model.``);
* SD 2.x ``cond_stage_model.model.<OpenCLIP names>``: ``token_embedding``, ``positional_embedding``,
  ``transformer.resblocks.i.{ln_1, attn.in_proj_weight/bias (q, k, v stacked), attn.out_proj, ln_2,
  mlp.c_fc, mlp.c_proj}``, ``ln_final``, ``text_projection``, ``logit_scale``. The fused input
  projection is split into ``q_proj``/``k_proj``/``v_proj``; the projection head is not needed.

The encoder never passes an attention mask to the tower (Stable Diffusion was trained without one:
padding tokens attend causally and their outputs are part of the context); ``mask`` is returned
for consumers that want it.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from .sd_configs import CLIP_L_TEXT, OPENCLIP_H_TEXT

__all__ = [
    "SDTextEncoder", "text_layout", "clip_state_from_ldm", "openclip_to_transformers", "transformers_to_openclip",
    "text_config_from_weights", "build_text_model", "canonical_text_state", "text_core", "CLIP_PREFIX",
    "OPENCLIP_PREFIX",
]

CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."

_OPENCLIP_LAYER = (
    ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
    ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"),
)
_OPENCLIP_IGNORED = ("text_projection", "logit_scale", "attn_mask")


def canonical_text_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``CLIPTextModel`` keys in the canonical ``text_model.*`` form, ``position_ids`` dropped.

    transformers 4.x names the tower ``text_model.*`` (as do diffusers folders and SD 1.x files);
    transformers 5.x drops that prefix. condiff maps everything to the prefixed form and adapts
    to the installed transformers when it builds the model (:func:`build_text_model`).
    """
    return {(k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in state.items() if not k.endswith("position_ids")}


def text_core(model: nn.Module) -> nn.Module:
    """The module holding ``embeddings``/``encoder``/``final_layer_norm`` (transformers 4.x and 5.x)."""
    return getattr(model, "text_model", model)


def text_layout(keys) -> str | None:
    """"clip" (SD 1.x), "openclip" (SD 2.x) or None: which text tower a single file stores."""
    clip = openclip = False
    for k in keys:
        clip = clip or k.startswith(CLIP_PREFIX)
        openclip = openclip or k.startswith(OPENCLIP_PREFIX)
    if clip and openclip:
        raise ValueError("the checkpoint stores both a CLIP and an OpenCLIP text encoder; which one to use is ambiguous")
    return "clip" if clip else "openclip" if openclip else None


def clip_state_from_ldm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """SD 1.x ``cond_stage_model.transformer.*`` -> ``CLIPTextModel`` state dict (``text_model.*``)."""
    return canonical_text_state({k[len(CLIP_PREFIX):]: v for k, v in state.items() if k.startswith(CLIP_PREFIX)})


def _num_layers(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def openclip_to_transformers(state: Mapping[str, Tensor], keep_layers: int | None = None) -> dict[str, Tensor]:
    """OpenCLIP text tower (``cond_stage_model.model.`` removed) -> ``CLIPTextModel`` state dict.

    Only the first ``keep_layers`` residual blocks are kept (SD 2.x: all but the last).
    """
    n = _num_layers(state, r"transformer\.resblocks\.(\d+)\.")
    keep = n if keep_layers is None else keep_layers
    if keep > n:
        raise ValueError(f"the OpenCLIP text tower has {n} layers; cannot keep {keep}")
    out: dict[str, Tensor] = {}
    unknown = []
    for k, v in state.items():
        if k in _OPENCLIP_IGNORED or k.endswith("attn_mask") or k.startswith("visual."):
            continue
        if k == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = v
        elif k == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = v
        elif k.startswith("ln_final."):
            out["text_model.final_layer_norm." + k[len("ln_final."):]] = v
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", k):
            i, rest = int(m.group(1)), m.group(2)
            if i >= keep:
                continue
            base = f"text_model.encoder.layers.{i}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                    out[f"{base}self_attn.{name}.{kind}"] = part.contiguous()
                continue
            for src, dst in _OPENCLIP_LAYER:
                if rest.startswith(src + "."):
                    out[base + dst + rest[len(src):]] = v
                    break
            else:
                unknown.append(k)
        else:
            unknown.append(k)
    if unknown:
        raise ValueError(f"OpenCLIP text encoder: unexpected tensors {unknown[:8]}; not an SD 2.x checkpoint?")
    return out


def transformers_to_openclip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`openclip_to_transformers` (for exporting single files; no projection head)."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for k, v in canonical_text_state(state).items():
        if k == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = v
        elif k == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = v
        elif k.startswith("text_model.final_layer_norm."):
            out["ln_final." + k.rsplit(".", 1)[1]] = v
        elif m := re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)$", k):
            i, rest = int(m.group(1)), m.group(2)
            if mm := re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", rest):
                qkv.setdefault((i, mm.group(2)), {})[mm.group(1)] = v
                continue
            for src, dst in _OPENCLIP_LAYER:
                if rest.startswith(dst + "."):
                    out[f"transformer.resblocks.{i}.{src}{rest[len(dst):]}"] = v
                    break
            else:
                raise ValueError(f"cannot export {k} to the OpenCLIP layout")
        else:
            raise ValueError(f"cannot export {k} to the OpenCLIP layout")
    for (i, kind), parts in qkv.items():
        out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    return out


def text_config_from_weights(state_shapes: Mapping[str, Sequence[int]], layout: str) -> dict[str, Any]:
    """``CLIPTextConfig`` dict for a transformers-named state dict (``text_model.*`` keys).

    Sizes come from the shapes; activation and special tokens from the family's shipped config
    (``layout`` "clip" -> CLIP ViT-L/14, "openclip" -> OpenCLIP ViT-H/14). Heads are 64-dimensional
    in both towers, so ``heads = hidden // 64`` (12 for ViT-L, 16 for ViT-H).
    """
    base = copy.deepcopy(CLIP_L_TEXT if layout == "clip" else OPENCLIP_H_TEXT)
    tok = state_shapes.get("text_model.embeddings.token_embedding.weight")
    pos = state_shapes.get("text_model.embeddings.position_embedding.weight")
    fc1 = state_shapes.get("text_model.encoder.layers.0.mlp.fc1.weight")
    if tok is None or pos is None or fc1 is None:
        raise ValueError("the text encoder weights are incomplete (token/position embedding or layer 0 missing)")
    hidden = int(tok[1])
    base.update(
        vocab_size=int(tok[0]), hidden_size=hidden, max_position_embeddings=int(pos[0]),
        intermediate_size=int(fc1[0]),
        num_hidden_layers=_num_layers(state_shapes, r"text_model\.encoder\.layers\.(\d+)\."),
        num_attention_heads=base["num_attention_heads"] if hidden == base["hidden_size"] else max(1, hidden // 64),
    )
    if base["projection_dim"] > hidden:
        base["projection_dim"] = hidden
    return base


def build_text_model(config: Mapping[str, Any], state: Mapping[str, Tensor], *, dtype: torch.dtype = torch.float32):
    """A ``CLIPTextModel`` from a config dict and a transformers-named state dict (strict)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(**{k: v for k, v in config.items() if not k.startswith("_")})
    with torch.device("meta"):
        model = CLIPTextModel(cfg)
    state = canonical_text_state(state)
    expected = {k for k in model.state_dict() if not k.endswith("position_ids")}
    if not any(k.startswith("text_model.") for k in expected):  # transformers 5.x layout
        state = {k[len("text_model."):]: v for k, v in state.items()}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"text encoder weights do not fit the config: missing {missing[:6]}, unexpected {unexpected[:6]}")
    model.load_state_dict(state, strict=False, assign=True)
    # non-persistent buffers were created on the meta device: rebuild position_ids, refuse others
    for name, buf in list(model.named_buffers()):
        if not buf.is_meta:
            continue
        if not name.endswith("position_ids"):
            raise ValueError(f"cannot initialise the text encoder buffer {name} (unknown transformers version?)")
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        owner.register_buffer("position_ids", torch.arange(buf.shape[-1]).expand(buf.shape).clone(), persistent=False)
    return model.to(dtype).eval().requires_grad_(False)


class SDTextEncoder(nn.Module):
    """prompts -> (context [B, 77, D], mask [B, 77]), the ``text_encoder`` of a LatentDiffusion.

    ``skip_layers`` > 0 takes the hidden state that many layers before the last and applies the
    final LayerNorm ("CLIP skip"); condiff's SD 2.x models already end at the penultimate layer,
    so 0 is right for both families by default.
    """

    def __init__(self, model: nn.Module, tokenizer, *, skip_layers: int = 0, name: str = "clip"):
        super().__init__()
        if skip_layers < 0 or skip_layers >= model.config.num_hidden_layers:
            raise ValueError(f"skip_layers must be in [0, {model.config.num_hidden_layers - 1}], got {skip_layers}")
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the text encoder only {model.config.vocab_size} "
                "embeddings; tokenizer and text encoder do not belong together"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.skip_layers = int(skip_layers)
        self.name = name
        self.max_length = min(int(tokenizer.model_max_length), model.config.max_position_embeddings)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return text_core(self.model).embeddings.token_embedding.weight.device

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        enc = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device).bool()

    def encode_ids(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Context of token ids. ``attention_mask`` is accepted for interface parity and ignored:
        Stable Diffusion conditions on all 77 positions, padding included. Differentiable
        (textual inversion trains token embeddings through it)."""
        out = self.model(input_ids=input_ids, output_hidden_states=self.skip_layers > 0)
        if self.skip_layers == 0:
            return out.last_hidden_state
        hidden = out.hidden_states[-(self.skip_layers + 1)]
        return text_core(self.model).final_layer_norm(hidden)

    def forward(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        ids, mask = self.tokenize(prompts)
        return self.encode_ids(ids), mask
