"""Architecture of the conditional U-Net (:class:`UNetConfig`) and named presets.

The fields follow diffusers' ``UNet2DConditionModel`` config where the two share a meaning, so a
diffusers ``config.json`` converts both ways (:meth:`UNetConfig.from_diffusers_config`,
:meth:`UNetConfig.to_diffusers_config`); the networks are in :mod:`condiff.nn.unet`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

from .config_dict import ConfigDict, config_preset

__all__ = ["UNetConfig", "UNET_PRESETS", "CLASS_EMBED_TYPES"]

CLASS_EMBED_TYPES = (None, "timestep", "projection", "identity")


def _tuple(v: Any) -> Any:
    return tuple(_tuple(x) for x in v) if isinstance(v, (list, tuple)) else v


def _per_level(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries but there are {n} resolution levels (block_out_channels)")
    return value


#: diffusers UNet2DConditionModel options condiff implements only at these values.
_DIFFUSERS_FIXED_OPTIONS = {
    "center_input_sample": False, "act_fn": "silu", "downsample_padding": 1, "mid_block_scale_factor": 1,
    "only_cross_attention": False, "dual_cross_attention": False, "encoder_hid_dim": None,
    "encoder_hid_dim_type": None, "addition_embed_type": None, "time_embedding_type": "positional",
    "time_cond_proj_dim": None, "timestep_post_act": None, "time_embedding_act_fn": None, "conv_in_kernel": 3,
    "conv_out_kernel": 3, "attention_type": "default", "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
    "cross_attention_norm": None, "mid_block_only_cross_attention": None,
}


_NOT_IN_DIFFUSERS = ("sample_size", "attention_levels", "num_attention_heads", "cross_attention_dim", "mid_block")


@dataclass
class UNetConfig(ConfigDict):
    """Architecture of a :class:`UNet` (saved as ``config.json`` beside the weights).

    ``attention_levels[i]`` says whether level i has spatial transformers (cross-attention when
    ``cross_attention_dim`` is set, self-attention only otherwise); the expansive path mirrors it.
    ``num_attention_heads`` is the number of heads per level (what diffusers' config confusingly
    calls ``attention_head_dim``); each head has ``channels // heads`` dimensions.
    ``in_channels`` includes any concatenated conditioning channels (e.g. 9 for inpainting).
    ``reverse_transformer_layers_per_block`` (diffusers' name) sets the expansive path's transformer
    depths on their own: one entry per up block, deepest level first, each an int or one int per
    layer (``layers_per_block + 1``); None mirrors ``transformer_layers_per_block``. A deeper decoder
    adds capacity while the contracting path — the part a ControlNet copies — keeps its shape.
    Class conditioning: ``num_class_embeds`` (an embedding table, long labels),
    ``class_embed_type="timestep"`` (sinusoidal + MLP of a float label, e.g. a noise level),
    ``"projection"`` (MLP of a float vector of ``projection_class_embeddings_input_dim``, unCLIP)
    or ``"identity"`` (a ready time-embedding-sized vector). ``cross_attention_dim=None`` gives
    self-attention-only transformers (a condiff extension; diffusers cannot build that config).
    """

    in_channels: int = 4
    out_channels: int = 4
    sample_size: int = 64
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    layers_per_block: int = 2
    num_attention_heads: int | tuple[int, ...] = 8
    transformer_layers_per_block: int | tuple[int, ...] = 1
    reverse_transformer_layers_per_block: tuple[int | tuple[int, ...], ...] | None = None
    cross_attention_dim: int | None = 768
    use_linear_projection: bool = False
    upcast_attention: bool = False
    mid_block: bool = True
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    dropout: float = 0.0
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    time_embedding_dim: int | None = None
    resnet_time_scale_shift: str = "default"
    num_class_embeds: int | None = None
    class_embed_type: str | None = None
    projection_class_embeddings_input_dim: int | None = None
    class_embeddings_concat: bool = False

    def __post_init__(self):
        self.block_out_channels = _tuple(self.block_out_channels)
        self.attention_levels = tuple(bool(a) for a in _tuple(self.attention_levels))
        self.num_attention_heads = _tuple(self.num_attention_heads)
        self.transformer_layers_per_block = _tuple(self.transformer_layers_per_block)
        self.reverse_transformer_layers_per_block = _tuple(self.reverse_transformer_layers_per_block)
        self.validate()

    # ----------------------------------------------------------------- derived values
    @property
    def num_levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def heads(self) -> tuple[int, ...]:
        return _per_level(self.num_attention_heads, self.num_levels, "num_attention_heads")

    @property
    def transformer_depths(self) -> tuple[int, ...]:
        return _per_level(self.transformer_layers_per_block, self.num_levels, "transformer_layers_per_block")

    def up_transformer_depths(self, block: int) -> tuple[int, ...]:
        """Transformer depth of each layer of up block ``block`` (0 = the deepest level)."""
        n_layers = self.layers_per_block + 1
        rev = self.reverse_transformer_layers_per_block
        value = self.transformer_depths[self.num_levels - 1 - block] if rev is None else rev[block]
        if isinstance(value, int):
            return (value,) * n_layers
        if len(value) != n_layers:
            raise ValueError(f"reverse_transformer_layers_per_block[{block}] has {len(value)} entries; "
                             f"up blocks have layers_per_block + 1 = {n_layers} layers")
        return tuple(value)

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @property
    def temb_channels(self) -> int:
        """Width of the embedding the residual blocks see (doubled by ``class_embeddings_concat``)."""
        return self.time_embed_dim * (2 if self.class_embeddings_concat else 1)

    @property
    def has_class_embedding(self) -> bool:
        return self.class_embed_type is not None or self.num_class_embeds is not None

    @property
    def num_skip_connections(self) -> int:
        """Number of skip tensors (= ControlNet down residuals): conv_in + each resnet + each downsampler."""
        return 1 + self.num_levels * self.layers_per_block + self.num_levels - 1

    def validate(self) -> None:
        n = self.num_levels
        if n < 1 or any(c <= 0 for c in self.block_out_channels):
            raise ValueError("block_out_channels must list at least one positive channel count")
        if len(self.attention_levels) != n:
            raise ValueError(f"attention_levels has {len(self.attention_levels)} entries; block_out_channels has {n}")
        for ch in self.block_out_channels:
            if ch % self.norm_num_groups:
                raise ValueError(f"block_out_channels entry {ch} is not divisible by norm_num_groups={self.norm_num_groups}")
        for i, (ch, h, att) in enumerate(zip(self.block_out_channels, self.heads, self.attention_levels)):
            if (att or (self.mid_block and i == n - 1)) and ch % h:
                raise ValueError(f"{ch} channels cannot be split into {h} attention heads; change num_attention_heads")
        if any(not isinstance(d, int) or d < 1 for d in self.transformer_depths):
            raise ValueError(f"transformer_layers_per_block must be a positive int or one per level, got "
                             f"{self.transformer_layers_per_block!r} (per-layer depths of the expansive path go in "
                             "reverse_transformer_layers_per_block)")
        rev = self.reverse_transformer_layers_per_block
        if rev is not None and (not isinstance(rev, tuple) or len(rev) != n):
            raise ValueError(f"reverse_transformer_layers_per_block must list one entry per up block ({n}, deepest "
                             f"first), each an int or one int per layer; got {rev!r}")
        for b in range(n):
            if any(not isinstance(d, int) or d < 1 for d in self.up_transformer_depths(b)):
                raise ValueError(f"reverse_transformer_layers_per_block[{b}] = {rev[b]!r}: depths must be positive ints")
        if self.layers_per_block < 1:
            raise ValueError("layers_per_block must be >= 1")
        if self.resnet_time_scale_shift not in ("default", "scale_shift"):
            raise ValueError("resnet_time_scale_shift must be 'default' or 'scale_shift'")
        if self.class_embed_type not in CLASS_EMBED_TYPES:
            raise ValueError(f"class_embed_type must be one of {CLASS_EMBED_TYPES}, got {self.class_embed_type!r}")
        if self.class_embed_type == "projection" and not self.projection_class_embeddings_input_dim:
            raise ValueError("class_embed_type='projection' needs projection_class_embeddings_input_dim")
        if self.class_embed_type is not None and self.num_class_embeds is not None:
            raise ValueError("set either num_class_embeds (embedding table) or class_embed_type, not both")

    # ----------------------------------------------------------------- (de)serialisation
    @classmethod
    def preset(cls, name: str) -> "UNetConfig":
        return config_preset(cls, UNET_PRESETS, name, "U-Net")

    @classmethod
    def from_diffusers_config(cls, d: dict[str, Any]) -> "UNetConfig":
        """Build from a diffusers ``UNet2DConditionModel`` (or ``ControlNetModel``) ``config.json`` dict.

        Options condiff does not implement raise a ValueError naming them (SDXL added embeddings,
        dual cross-attention, …). ControlNet-only and bookkeeping keys are ignored.
        """
        for key, default in _DIFFUSERS_FIXED_OPTIONS.items():
            value = d.get(key, default)
            if value != default and not (key == "mid_block_only_cross_attention" and value is False):
                raise ValueError(f"diffusers option {key}={value!r} is not supported by condiff's UNet (needs {default!r})")
        down = tuple(d.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)))
        kinds = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
        if any(t not in kinds for t in down):
            raise ValueError(f"unsupported down_block_types {down}; condiff supports {sorted(kinds)}")
        levels = tuple(kinds[t] for t in down)
        expected_up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels))
        if "up_block_types" in d and tuple(d["up_block_types"]) != expected_up:
            raise ValueError(f"up_block_types {tuple(d['up_block_types'])} must mirror down_block_types: {expected_up}")
        mid_type = d.get("mid_block_type", "UNetMidBlock2DCrossAttn")
        if mid_type not in ("UNetMidBlock2DCrossAttn", None):
            raise ValueError(f"unsupported mid_block_type {mid_type!r}")
        cross = d.get("cross_attention_dim", 1280)
        if isinstance(cross, (list, tuple)):
            if len(set(cross)) != 1:
                raise ValueError("per-level cross_attention_dim values are not supported")
            cross = cross[0]
        heads = d.get("num_attention_heads") or d.get("attention_head_dim", 8)
        # the remaining fields share name and default value with diffusers' config
        same = {f.name: d.get(f.name, f.default) for f in fields(cls) if f.name not in _NOT_IN_DIFFUSERS}
        return cls(
            **same, sample_size=d.get("sample_size") or 64, attention_levels=levels, num_attention_heads=heads,
            cross_attention_dim=cross, mid_block=mid_type is not None,
        )

    def to_diffusers_config(self) -> dict[str, Any]:
        """The equivalent diffusers ``UNet2DConditionModel`` config (for export and parity tests)."""
        levels = self.attention_levels
        return {
            "sample_size": self.sample_size, "in_channels": self.in_channels, "out_channels": self.out_channels,
            "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in levels),
            "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels)),
            "mid_block_type": "UNetMidBlock2DCrossAttn" if self.mid_block else None,
            "block_out_channels": tuple(self.block_out_channels), "layers_per_block": self.layers_per_block,
            "attention_head_dim": self.num_attention_heads, "cross_attention_dim": self.cross_attention_dim,
            "transformer_layers_per_block": self.transformer_layers_per_block,
            "reverse_transformer_layers_per_block": self.reverse_transformer_layers_per_block,
            "use_linear_projection": self.use_linear_projection, "upcast_attention": self.upcast_attention,
            "norm_num_groups": self.norm_num_groups, "norm_eps": self.norm_eps, "dropout": self.dropout,
            "flip_sin_to_cos": self.flip_sin_to_cos, "freq_shift": self.freq_shift,
            "time_embedding_dim": self.time_embedding_dim, "resnet_time_scale_shift": self.resnet_time_scale_shift,
            "num_class_embeds": self.num_class_embeds, "class_embed_type": self.class_embed_type,
            "projection_class_embeddings_input_dim": self.projection_class_embeddings_input_dim,
            "class_embeddings_concat": self.class_embeddings_concat,
        }


_SD1 = dict(block_out_channels=[320, 640, 1280, 1280], attention_levels=[True, True, True, False], layers_per_block=2)
_SD2 = dict(_SD1, num_attention_heads=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True)
_BUILTIN_LDM = dict(
    in_channels=4, out_channels=4, sample_size=32, block_out_channels=[64, 128, 192],
    attention_levels=[False, True, True], layers_per_block=2, num_attention_heads=[1, 2, 3],
    cross_attention_dim=384, use_linear_projection=True,
)

#: Architectures by name: Stable Diffusion 1.x/2.x and condiff's own built-in models. The built-in
#: ones use MiniLM's 384-d token embeddings as cross-attention context and 64-d attention heads.
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "sd15": dict(_SD1, num_attention_heads=8, cross_attention_dim=768, sample_size=64),
    "sd15-inpaint": dict(_SD1, num_attention_heads=8, cross_attention_dim=768, sample_size=64, in_channels=9),
    "sd2-base": dict(_SD2, sample_size=64),
    "sd2": dict(_SD2, sample_size=96, upcast_attention=True),
    "sd2-inpaint": dict(_SD2, sample_size=64, in_channels=9),
    # 128×128 images -> 32×32×4 latents (f=4 autoencoder "builtin-f4"), text-conditioned.
    "builtin-ldm": _BUILTIN_LDM,
    # inpainting variant: latent (4) + mask (1) + masked-image latent (4) input channels.
    "builtin-ldm-inpaint": dict(_BUILTIN_LDM, in_channels=9),
    # pixel-space 64×64 RGB, text-conditioned (base of the cascade).
    "builtin-pixel64": dict(
        in_channels=3, out_channels=3, sample_size=64, block_out_channels=[64, 96, 128, 192],
        attention_levels=[False, False, True, True], layers_per_block=2, num_attention_heads=[1, 1, 2, 3],
        cross_attention_dim=384, use_linear_projection=True,
    ),
    # SR3-style 64->128 super-resolution: noisy image (3) + upsampled low-resolution image (3);
    # the noise-augmentation level enters as a float "timestep" class label.
    "builtin-sr128": dict(
        in_channels=6, out_channels=3, sample_size=128, block_out_channels=[32, 64, 128, 128],
        attention_levels=[False, False, False, True], layers_per_block=1, num_attention_heads=[1, 1, 2, 2],
        cross_attention_dim=None, class_embed_type="timestep",
    ),
}
