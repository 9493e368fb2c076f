"""Stable Diffusion 1.x / 2.x configurations shipped inside condiff, and configs read off weights.

No config is ever downloaded. A diffusers folder brings its own ``config.json`` files; a single-file
checkpoint (original LDM keys) brings only tensors, so condiff

1. reads every *structural* hyper-parameter from the tensor shapes (channels per level, layers
   per level, which levels have cross-attention, context width, linear or 1×1-conv projections,
   transformer depth, input channels: 4, or 9 for inpainting), and
2. takes the rest, which no shape reveals, from the shipped config of the detected family:
   attention heads (SD 1.x: 8 heads per level; SD 2.x: 64-dimensional heads), ``upcast_attention``,
   sample size, the text encoder's activation and output layer, and the β schedule
   (scaled-linear, β from 0.00085 to 0.012 over 1000 steps, Rombach et al. 2022).

For the real SD 1.5 / 2.1 shapes step 1 reproduces the shipped configs exactly (tested), and the
same code serves small test models. The U-Net and autoencoder configs are diffusers-style dicts, so
:meth:`condiff.nn.unet.UNetConfig.from_diffusers_config` and
:meth:`condiff.nn.autoencoder.AutoencoderConfig.from_diffusers_config` read them like a folder's.

Variant names: ``sd1``, ``sd1-inpaint``, ``sd2-base`` (512, ε), ``sd2-768-v`` (768, v-prediction),
``sd2-inpaint``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ..schedules import DiscreteSchedule, cosine_betas, linear_betas, scaled_linear_betas
from .sd_keymap import UNetStructure, unet_structure_from_ldm

__all__ = [
    "SDVariant", "SD_VARIANTS", "FAMILIES", "get_variant", "variant_name",
    "unet_config_from_ldm", "vae_config_from_ldm", "controlnet_config_from_ldm",
    "schedule_from_scheduler_config", "schedule_from_ldm_buffers", "PREDICTION_NAMES",
]

Shapes = Mapping[str, Sequence[int]]

FAMILIES = ("sd1", "sd2")

#: diffusers' prediction_type -> condiff prediction name (condiff.denoisers.PREDICTIONS)
PREDICTION_NAMES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "eps": "eps", "v": "v", "x0": "x0"}


def _unet(cross: int, heads: Any, *, linear: bool, in_channels: int = 4, sample_size: int = 64,
          upcast: bool = False) -> dict[str, Any]:
    return {
        "sample_size": sample_size, "in_channels": in_channels, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
        "attention_head_dim": heads, "cross_attention_dim": cross, "use_linear_projection": linear,
        "upcast_attention": upcast, "norm_num_groups": 32, "norm_eps": 1e-5,
        "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1, "act_fn": "silu",
        "mid_block_type": "UNetMidBlock2DCrossAttn", "transformer_layers_per_block": 1,
    }


def _vae(sample_size: int) -> dict[str, Any]:
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
        "sample_size": sample_size, "scaling_factor": 0.18215, "act_fn": "silu",
        "mid_block_add_attention": True, "use_quant_conv": True, "use_post_quant_conv": True,
    }


#: CLIP ViT-L/14 text tower (SD 1.x; output: last hidden state after the final LayerNorm).
CLIP_L_TEXT = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "projection_dim": 768, "bos_token_id": 49406, "eos_token_id": 49407,
    "pad_token_id": 49407,
}
#: OpenCLIP ViT-H/14 text tower as SD 2.x uses it: the penultimate of its 24 layers, then the final
#: LayerNorm (the "penultimate" layer of ``FrozenOpenCLIPEmbedder``) = a 23-layer CLIPTextModel.
OPENCLIP_H_TEXT = {
    "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu",
    "layer_norm_eps": 1e-5, "projection_dim": 512, "bos_token_id": 49406, "eos_token_id": 49407,
    "pad_token_id": 0,
}


def _scheduler(prediction: str) -> dict[str, Any]:
    return {
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "prediction_type": prediction, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
    }


@dataclass(frozen=True)
class SDVariant:
    """Everything condiff needs to build a Stable Diffusion variant without its config files.

    ``text`` is a ``transformers.CLIPTextConfig`` dict; ``text_skip_layers`` how many final layers of
    the original text tower the conditioning skips (1 for SD 2.x's penultimate layer);
    ``pad_token`` the token that fills prompts to 77 (SD 1.x: end-of-text, SD 2.x: "!", id 0).
    """

    name: str
    family: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    scheduler: dict[str, Any]
    image_size: int
    text_skip_layers: int = 0
    pad_token: str = "<|endoftext|>"
    description: str = ""

    @property
    def prediction(self) -> str:
        return PREDICTION_NAMES[self.scheduler["prediction_type"]]


SD_VARIANTS: dict[str, SDVariant] = {
    v.name: v
    for v in (
        SDVariant("sd1", "sd1", _unet(768, 8, linear=False), _vae(512), CLIP_L_TEXT, _scheduler("epsilon"), 512,
                  description="Stable Diffusion 1.x (1.1–1.5), 512², ε-prediction, CLIP ViT-L/14"),
        SDVariant("sd1-inpaint", "sd1", _unet(768, 8, linear=False, in_channels=9), _vae(512), CLIP_L_TEXT,
                  _scheduler("epsilon"), 512, description="SD 1.x inpainting U-Net (4 + 1 mask + 4 masked-image channels)"),
        SDVariant("sd2-base", "sd2", _unet(1024, [5, 10, 20, 20], linear=True), _vae(512), OPENCLIP_H_TEXT,
                  _scheduler("epsilon"), 512, text_skip_layers=1, pad_token="!",
                  description="Stable Diffusion 2.x base, 512², ε-prediction, OpenCLIP ViT-H/14 (penultimate layer)"),
        SDVariant("sd2-768-v", "sd2", _unet(1024, [5, 10, 20, 20], linear=True, sample_size=96, upcast=True),
                  _vae(768), OPENCLIP_H_TEXT, _scheduler("v_prediction"), 768, text_skip_layers=1, pad_token="!",
                  description="Stable Diffusion 2.x 768-v, v-prediction, attention upcast to fp32"),
        SDVariant("sd2-inpaint", "sd2", _unet(1024, [5, 10, 20, 20], linear=True, in_channels=9), _vae(512),
                  OPENCLIP_H_TEXT, _scheduler("epsilon"), 512, text_skip_layers=1, pad_token="!",
                  description="SD 2.x inpainting U-Net (9 input channels), ε-prediction"),
    )
}


def get_variant(name: str) -> SDVariant:
    if name not in SD_VARIANTS:
        raise ValueError(f"unknown Stable Diffusion variant {name!r}; choose one of {sorted(SD_VARIANTS)}")
    return SD_VARIANTS[name]


def variant_name(family: str, in_channels: int, prediction: str) -> str:
    """The shipped variant that matches a family, the U-Net's input channels and the prediction type."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; condiff supports {FAMILIES}")
    if in_channels == 9:
        return f"{family}-inpaint"
    if family == "sd2":
        return "sd2-768-v" if prediction == "v" else "sd2-base"
    return "sd1"


def heads_for_family(family: str, channels: Sequence[int]) -> int | list[int]:
    """Attention heads: SD 1.x uses 8 per level; SD 2.x uses 64-dimensional heads."""
    if family == "sd1":
        return 8
    return [max(1, c // 64) for c in channels]


# ============================================================ configs from LDM tensor shapes
def _need(shapes: Shapes, key: str, what: str) -> Sequence[int]:
    if key not in shapes:
        raise ValueError(f"{what}: the checkpoint has no tensor {key!r}; it is incomplete or not Stable Diffusion 1.x/2.x")
    return shapes[key]


def _transformer_depth(shapes: Shapes, prefix: str) -> int:
    rx = re.compile(re.escape(prefix) + r"\.transformer_blocks\.(\d+)\.")
    found = {int(m.group(1)) for k in shapes if (m := rx.match(k))}
    return max(found) + 1 if found else 1


def _unet_body(shapes: Shapes, s: UNetStructure, family: str, what: str) -> dict[str, Any]:
    L = s.layers_per_block
    first = [1 + level * (L + 1) for level in range(s.levels)]
    boc = [int(_need(shapes, f"input_blocks.{i}.0.out_layers.3.weight", what)[0]) for i in first]
    cross = next((int(v[1]) for k, v in shapes.items() if k.endswith("attn2.to_k.weight")), None)
    proj = next((v for k, v in shapes.items() if k.endswith(".proj_in.weight")), None)
    depths = [_transformer_depth(shapes, f"input_blocks.{i}.1") for i in first]
    cfg: dict[str, Any] = {
        "in_channels": int(_need(shapes, "input_blocks.0.0.weight", what)[1]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in s.attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(s.attention)],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if s.mid_block else None,
        "block_out_channels": boc, "layers_per_block": L,
        "attention_head_dim": heads_for_family(family, boc),
        "cross_attention_dim": cross if cross is not None else boc[-1],
        "use_linear_projection": proj is not None and len(proj) == 2,
        "transformer_layers_per_block": depths[0] if len(set(depths)) == 1 else depths,
    }
    time_dim = int(_need(shapes, "time_embed.0.weight", what)[0])
    if time_dim != 4 * boc[0]:
        cfg["time_embedding_dim"] = time_dim
    if "label_emb.weight" in shapes:
        cfg["num_class_embeds"] = int(shapes["label_emb.weight"][0])
    elif "label_emb.0.0.weight" in shapes:
        cfg["class_embed_type"] = "projection"
        cfg["projection_class_embeddings_input_dim"] = int(shapes["label_emb.0.0.weight"][1])
    return cfg


def unet_config_from_ldm(shapes: Shapes, family: str, variant: SDVariant | None = None) -> dict[str, Any]:
    """diffusers-style U-Net config read off LDM U-Net tensor shapes (prefix removed).

    Fields no shape reveals (``upcast_attention``, ``sample_size``) come from ``variant``
    (default: the family's base variant).
    """
    variant = variant or get_variant(variant_name(family, 4, "eps"))
    s = unet_structure_from_ldm(shapes)
    cfg = copy.deepcopy(variant.unet)
    cfg.update(_unet_body(shapes, s, family, "U-Net"))
    cfg["out_channels"] = int(_need(shapes, "out.2.weight", "U-Net")[0])
    return cfg


def controlnet_config_from_ldm(shapes: Shapes, family: str) -> dict[str, Any]:
    """diffusers-style ``ControlNetModel`` config read off original ControlNet shapes (prefix removed)."""
    s = unet_structure_from_ldm(shapes)
    base = copy.deepcopy(get_variant(variant_name(family, 4, "eps")).unet)
    for key in ("sample_size", "out_channels", "up_block_types"):
        base.pop(key, None)
    base.update(_unet_body(shapes, s, family, "ControlNet"))
    base.pop("up_block_types")
    n_hint = len({k.split(".")[1] for k in shapes if k.startswith("input_hint_block.") and k.endswith(".weight")})
    if n_hint < 2:
        raise ValueError("ControlNet: no input_hint_block convolutions found; not an original ControlNet checkpoint")
    outs = [int(shapes[f"input_hint_block.{2 * k}.weight"][0]) for k in range(0, n_hint - 1, 2)]
    base["conditioning_channels"] = int(shapes["input_hint_block.0.weight"][1])
    base["conditioning_embedding_out_channels"] = outs
    return base


def vae_config_from_ldm(shapes: Shapes, variant: SDVariant | None = None) -> dict[str, Any]:
    """diffusers-style ``AutoencoderKL`` config read off LDM autoencoder shapes (prefix removed).

    GroupNorm groups cannot be read from shapes; the LDM autoencoder always uses 32.
    """
    what = "autoencoder"
    levels = {int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down.")}
    if not levels:
        raise ValueError("autoencoder: no encoder.down.* tensors; the checkpoint has no LDM autoencoder")
    n = max(levels) + 1
    boc = [int(_need(shapes, f"encoder.down.{i}.block.0.conv1.weight", what)[0]) for i in range(n)]
    layers = len({k.split(".")[4] for k in shapes if k.startswith("encoder.down.0.block.")})
    cfg = copy.deepcopy((variant or get_variant("sd1")).vae)
    latent = int(_need(shapes, "decoder.conv_in.weight", what)[1])
    cfg.update(
        in_channels=int(_need(shapes, "encoder.conv_in.weight", what)[1]),
        out_channels=int(_need(shapes, "decoder.conv_out.weight", what)[0]),
        latent_channels=latent, block_out_channels=boc, layers_per_block=layers,
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        mid_block_add_attention="encoder.mid.attn_1.q.weight" in shapes,
        use_quant_conv="quant_conv.weight" in shapes, use_post_quant_conv="post_quant_conv.weight" in shapes,
    )
    return cfg


# ============================================================ schedules
def schedule_from_scheduler_config(d: Mapping[str, Any]) -> tuple[DiscreteSchedule, str | None]:
    """A diffusers ``scheduler_config.json`` -> (training schedule, prediction or None).

    Supports ``beta_schedule`` scaled_linear / linear / squaredcos_cap_v2 and ``trained_betas``.
    """
    if d.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr=True (zero terminal SNR) is not supported: σ_max would be infinite")
    n = int(d.get("num_train_timesteps", 1000))
    kind = d.get("beta_schedule", "scaled_linear")
    start, end = float(d.get("beta_start", 0.00085)), float(d.get("beta_end", 0.012))
    if d.get("trained_betas") is not None:
        betas = torch.tensor(d["trained_betas"], dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = scaled_linear_betas(n, start, end)
    elif kind == "linear":
        betas = linear_betas(n, start, end)
    elif kind == "squaredcos_cap_v2":
        betas = cosine_betas(n)
    else:
        raise ValueError(f"beta_schedule {kind!r} is not supported (scaled_linear, linear, squaredcos_cap_v2)")
    pred = d.get("prediction_type")
    if pred is not None and pred not in PREDICTION_NAMES:
        raise ValueError(f"prediction_type {pred!r} is not supported; expected one of {sorted(PREDICTION_NAMES)}")
    return DiscreteSchedule.from_betas(betas), PREDICTION_NAMES.get(pred) if pred else None


def schedule_from_ldm_buffers(state: Mapping[str, torch.Tensor]) -> DiscreteSchedule | None:
    """The schedule stored in an LDM checkpoint (``betas`` buffer), if present and sane."""
    betas = state.get("betas")
    if betas is None or betas.ndim != 1 or len(betas) < 2:
        return None
    betas = betas.double()
    if (betas <= 0).any() or (betas >= 1).any():
        return None
    return DiscreteSchedule.from_betas(betas)
