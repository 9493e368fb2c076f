"""unCLIP (thesis 3.2.1, Fig. 3.5; Ramesh et al. 2022 "DALL-E 2"): a text → image-embedding prior and
an image-embedding → image decoder, over condiff's own CLIP-style embedding space.

The CLIP of the built-in world is a ``condiff-evalenc``-style image tower
(:mod:`condiff.nn.image_encoder`) trained contrastively against the frozen MiniLM sentence
embedding, so MiniLM's pooled caption embedding plays CLIP's text embedding and the tower's image
embedding CLIP's image embedding. Both are L2-normalised 384-d vectors; inside the models they are
multiplied by √384 (:data:`EMBED_SCALE`) so each coordinate has roughly unit variance (as DALL-E 2
scales CLIP embeddings before diffusing them).

**Which image tower.** The prior and decoder only work in the embedding space they were trained
in, so unCLIP does not follow the evaluation encoder (component ``evalenc``, which is retrained to
improve the metrics). The unCLIP configs name their image-encoder component under
:data:`IMAGE_ENCODER_KEY` (``"image_encoder_component"``); the shipped ones name
``unclip-embedder``, a frozen, byte-identical snapshot of ``condiff-evalenc`` of 2026-11-26 that
they were trained on. A config without the key (older exports) means ``evalenc``.

* **Prior** (:class:`UnCLIPPrior`): a diffusion model over the 384-d image embedding. A small
  transformer reads the sequence [text tokens (optional), pooled text embedding, timestep
  embedding, noisy image embedding] and predicts the clean embedding x̂0 directly (DALL-E 2's
  prior predicts x0 with an MSE loss). Classifier-free on the text: during training the text is
  replaced by the empty prompt's with probability 0.1.
* **Decoder** (:class:`UnCLIPDecoder`): a 64×64 pixel U-Net (v-prediction, cosine schedule)
  conditioned on the image embedding twice, as DALL-E 2 does: projected and *added to the timestep
  embedding* (U-Net ``class_embed_type="projection"``) and projected into 4 extra
  cross-attention tokens appended to the caption tokens. CFG on the embedding: it is replaced by
  the null (zero) embedding with probability 0.1, and the caption by the empty prompt with
  probability 0.5, so the decoder also works from an embedding alone (image variations).

Why a 64×64 *pixel* decoder and not a latent one: DALL-E 2 itself decodes at 64×64 pixels and
leaves resolution to diffusion upsamplers, and condiff already has one: the cascade's SR3 stage
(64 → 128, :mod:`condiff.models.cascade`) serves as unCLIP's upsampler too. A pixel decoder also
keeps the comparison with latent diffusion honest (no autoencoder in this architecture, so no
reconstruction artefacts outside the mask, thesis Fig. 4.15).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..denoisers import Cond, NetworkDenoiser
from ..nn.config_dict import ConfigDict
from ..nn.layers import SinusoidalEmbedding, TimestepEmbedding
from ..nn.unet import UNet, UNetConfig, component_parameter_counts
from ..schedules import DiscreteSchedule
from .cascade import CascadeModel, cascade_base_config, pixel_denoiser
from .weights import WeightsError, load_frozen, read_config

__all__ = [
    "EMBED_DIM",
    "EMBED_SCALE",
    "UNCLIP_COMPONENTS",
    "UNCLIP_EMBEDDER",
    "EVALENC",
    "IMAGE_ENCODER_KEY",
    "PriorConfig",
    "UnCLIPPrior",
    "DecoderConfig",
    "UnCLIPDecoder",
    "UnCLIPModel",
    "pool_tokens",
    "image_encoder_component",
    "load_image_encoder",
    "load_evalenc",
    "load_unclip",
]

EMBED_DIM = 384
EMBED_SCALE = math.sqrt(EMBED_DIM)
UNCLIP_COMPONENTS = {"prior": "unclip-prior", "decoder": "unclip-decoder"}
#: The evaluation encoder (every built-in metric) and unCLIP's own frozen image tower.
EVALENC = "evalenc"
UNCLIP_EMBEDDER = "unclip-embedder"
#: Key of the unCLIP configs naming their image-encoder component (absent: :data:`EVALENC`).
IMAGE_ENCODER_KEY = "image_encoder_component"


def pool_tokens(context: Tensor, mask: Tensor) -> Tensor:
    """Mean-pooled, L2-normalised sentence embedding from token embeddings (sentence-transformers)."""
    m = mask.unsqueeze(-1).to(context.dtype)
    return F.normalize((context * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)


# =========================================================================== prior


@dataclass
class PriorConfig(ConfigDict):
    embed_dim: int = EMBED_DIM
    text_dim: int = 384
    width: int = 256
    depth: int = 4
    heads: int = 4
    use_text_tokens: bool = True
    max_text_tokens: int = 24
    dropout: float = 0.0

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"prior width {self.width} is not divisible by heads={self.heads}")
        if self.depth < 1:
            raise ValueError("prior depth must be >= 1")


class UnCLIPPrior(nn.Module):
    """x̂0 = net(x_t, t, cond) over scaled image embeddings [B, embed_dim] (Network protocol).

    ``cond.class_labels``: the pooled text embedding [B, text_dim] (scaled by √384 inside);
    ``cond.context`` / ``cond.context_mask``: the caption tokens [B, L, text_dim] (when
    ``use_text_tokens``). Padded tokens are masked out of the self-attention.
    """

    def __init__(self, config: PriorConfig | None = None):
        super().__init__()
        cfg = self.config = config or PriorConfig()
        w = cfg.width
        self.time_proj = SinusoidalEmbedding(w)
        self.time_embed = TimestepEmbedding(w, w)
        self.text_embed = nn.Linear(cfg.text_dim, w)
        self.token_proj = nn.Linear(cfg.text_dim, w) if cfg.use_text_tokens else None
        self.x_in = nn.Linear(cfg.embed_dim, w)
        n_pos = (cfg.max_text_tokens if cfg.use_text_tokens else 0) + 3
        self.positions = nn.Parameter(torch.zeros(1, n_pos, w))
        layer = nn.TransformerEncoderLayer(w, cfg.heads, 4 * w, cfg.dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(w)
        self.x_out = nn.Linear(w, cfg.embed_dim)
        nn.init.normal_(self.positions, std=0.02)

    def forward(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        cfg = self.config
        if x.ndim != 2 or x.shape[1] != cfg.embed_dim:
            raise ValueError(f"the prior diffuses embeddings [B, {cfg.embed_dim}], got {tuple(x.shape)}")
        if cond is None or cond.class_labels is None or cond.class_labels.shape != (x.shape[0], cfg.text_dim):
            raise ValueError(f"the prior needs the pooled text embedding in cond.class_labels [B, {cfg.text_dim}]")
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(b) if t.ndim == 0 else t
        parts = [self.text_embed(cond.class_labels.to(x.dtype) * EMBED_SCALE)[:, None],
                 self.time_embed(self.time_proj(t).to(x.dtype))[:, None], self.x_in(x)[:, None]]
        pad = torch.zeros(b, 3, dtype=torch.bool, device=x.device)
        if self.token_proj is not None:
            if cond.context is None:
                raise ValueError("this prior reads caption tokens: pass cond.context [B, L, text_dim]")
            ctx = cond.context[:, : cfg.max_text_tokens].to(x.dtype)
            if ctx.shape[1] < cfg.max_text_tokens:
                ctx = F.pad(ctx, (0, 0, 0, cfg.max_text_tokens - ctx.shape[1]))
            keep = torch.ones(ctx.shape[:2], dtype=torch.bool, device=x.device)
            if cond.context_mask is not None:
                m = cond.context_mask[:, : cfg.max_text_tokens].to(x.device).bool()
                keep = F.pad(m, (0, cfg.max_text_tokens - m.shape[1]), value=False)
            elif cond.context.shape[1] < cfg.max_text_tokens:
                keep[:, cond.context.shape[1]:] = False
            parts.insert(0, self.token_proj(ctx))
            pad = torch.cat([~keep, pad], dim=1)
        h = torch.cat(parts, dim=1) + self.positions.to(x.dtype)
        h = self.transformer(h, src_key_padding_mask=pad)
        return self.x_out(self.norm_out(h[:, -1]))


# =========================================================================== decoder


@dataclass
class DecoderConfig(ConfigDict):
    unet: dict[str, Any] = field(default_factory=lambda: cascade_base_config(
        class_embed_type="projection", projection_class_embeddings_input_dim=EMBED_DIM).to_dict())
    embed_dim: int = EMBED_DIM
    embed_tokens: int = 4


class UnCLIPDecoder(nn.Module):
    """Pixel U-Net conditioned on a (scaled) image embedding in ``cond.class_labels`` [B, 384].

    The embedding is added to the timestep embedding (``class_embed_type="projection"``) and
    projected to ``embed_tokens`` extra cross-attention tokens appended to ``cond.context``.
    """

    def __init__(self, config: DecoderConfig | None = None):
        super().__init__()
        cfg = self.config = config or DecoderConfig()
        ucfg = UNetConfig.from_dict(cfg.unet)
        if ucfg.class_embed_type != "projection" or ucfg.projection_class_embeddings_input_dim != cfg.embed_dim:
            raise ValueError("the unCLIP decoder's U-Net needs class_embed_type='projection' with "
                             f"projection_class_embeddings_input_dim={cfg.embed_dim}")
        if ucfg.cross_attention_dim is None:
            raise ValueError("the unCLIP decoder's U-Net needs cross-attention (cross_attention_dim)")
        self.unet = UNet(ucfg)
        self.embed_to_tokens = nn.Linear(cfg.embed_dim, cfg.embed_tokens * ucfg.cross_attention_dim)

    def forward(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        if cond is None or cond.class_labels is None:
            raise ValueError("the unCLIP decoder needs the image embedding in cond.class_labels [B, 384]")
        emb = cond.class_labels.to(x.dtype)
        d = self.unet.config.cross_attention_dim
        tokens = self.embed_to_tokens(emb).view(x.shape[0], self.config.embed_tokens, d)
        context, mask = tokens, None
        if cond.context is not None:
            context = torch.cat([cond.context.to(x.dtype), tokens], dim=1)
            if cond.context_mask is not None:
                ones = torch.ones(tokens.shape[:2], dtype=torch.bool, device=x.device)
                mask = torch.cat([cond.context_mask.to(x.device).bool(), ones], dim=1)
        return self.unet(x, t, Cond(context=context, context_mask=mask, class_labels=emb, control=cond.control))


# =========================================================================== the model

TextEncoder = Callable[[Sequence[str]], tuple[Tensor, Tensor]]
ImageEncoderFn = Callable[[Tensor], Tensor]


@dataclass
class UnCLIPModel:
    """Prior + decoder (+ optional SR upsampler) over one image tower's embedding space.

    ``image_encoder(images in [0, 1]) -> [B, 384]`` normalised embeddings (the component named
    ``image_encoder_component``: ``unclip-embedder`` for the shipped model, see the module doc);
    ``text_encoder(prompts) -> (context, mask)`` (MiniLM); ``upsampler``: a :class:`CascadeModel`
    whose SR stage takes the decoder's 64×64 output to 128×128 (None: output at 64×64).
    """

    prior: nn.Module | None
    decoder: nn.Module | None
    text_encoder: TextEncoder
    image_encoder: ImageEncoderFn | None = None
    prior_schedule: DiscreteSchedule = field(default_factory=lambda: DiscreteSchedule.named("cosine"))
    decoder_schedule: DiscreteSchedule = field(default_factory=lambda: DiscreteSchedule.named("cosine"))
    prior_prediction: str = "x0"
    decoder_prediction: str = "v"
    decoder_size: int = 64
    upsampler: CascadeModel | None = None
    name: str = "builtin-unclip"
    info: dict[str, Any] = field(default_factory=dict)
    image_encoder_component: str = EVALENC

    @property
    def device(self) -> torch.device:
        for net in (self.decoder, self.prior):
            p = next(net.parameters(), None) if net is not None else None
            if p is not None:
                return p.device
        return torch.device("cpu")

    def prior_denoiser(self) -> NetworkDenoiser:
        if self.prior is None:
            raise ValueError(f"this unCLIP model has no prior (component {UNCLIP_COMPONENTS['prior']!r} missing); "
                             "text-to-image needs it, image variations do not")
        return pixel_denoiser(self.prior, self.prior_schedule, self.prior_prediction)

    def decoder_denoiser(self) -> NetworkDenoiser:
        if self.decoder is None:
            raise ValueError(f"this unCLIP model has no decoder (component {UNCLIP_COMPONENTS['decoder']!r} missing)")
        return pixel_denoiser(self.decoder, self.decoder_schedule, self.decoder_prediction)

    # ---------------------------------------------------------------- conditionings
    @torch.no_grad()
    def text_cond(self, prompts: Sequence[str]) -> Cond:
        """Prior conditioning: caption tokens (padding included, as trained) + pooled embedding (class_labels)."""
        ctx, mask = self.text_encoder(list(prompts))
        ctx, mask = ctx.to(self.device, torch.float32), mask.to(self.device)
        return Cond(context=ctx, class_labels=pool_tokens(ctx, mask))

    @torch.no_grad()
    def decoder_cond(self, embeddings: Tensor, prompts: Sequence[str]) -> Cond:
        """Decoder conditioning: normalised embeddings [B, 384] (scaled by √384) + caption tokens."""
        ctx, _ = self.text_encoder(list(prompts))
        return Cond(context=ctx.to(self.device, torch.float32), class_labels=self.scale_embedding(embeddings))

    def scale_embedding(self, embeddings: Tensor) -> Tensor:
        if embeddings.ndim != 2 or embeddings.shape[1] != EMBED_DIM:
            raise ValueError(f"image embeddings must be [B, {EMBED_DIM}], got {tuple(embeddings.shape)}")
        return F.normalize(embeddings.to(self.device, torch.float32), dim=-1) * EMBED_SCALE

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """Image-tower embeddings of images in [0, 1] (resized to the encoder's training size)."""
        if self.image_encoder is None:
            raise ValueError(f"this unCLIP model has no image encoder (component {self.image_encoder_component!r} "
                             "missing); image variations need it")
        size = getattr(getattr(self.image_encoder, "config", None), "image_size", None)
        if size and images.shape[-1] != size:
            images = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=True).clamp(0, 1)
        return F.normalize(self.image_encoder(images.to(self.device)).float(), dim=-1)

    def parameter_counts(self) -> dict[str, int]:
        return component_parameter_counts({
            "decoder": self.decoder, "prior": self.prior, "SR U-Net": getattr(self.upsampler, "sr_unet", None),
            "image encoder": self.image_encoder, "text encoder": self.text_encoder,
        })


# =========================================================================== loading


def _load_component(folder: Path, build: Callable[[dict], nn.Module], device, dtype) -> tuple[nn.Module, dict]:
    config = read_config(folder)
    return load_frozen(build(config["network"]), folder, device=device, dtype=dtype), config


def _schedule(config: dict) -> DiscreteSchedule:
    s = config.get("schedule", {"name": "cosine", "steps": 1000})
    return DiscreteSchedule.named(s["name"], int(s["steps"]))


def image_encoder_component(*configs: dict) -> str:
    """The image-encoder component named by unCLIP configs (:data:`IMAGE_ENCODER_KEY`; absent: ``evalenc``).

    Empty configs (a component that is not there) are ignored; the others must agree, as prior and
    decoder share one embedding space.
    """
    named = {c.get(IMAGE_ENCODER_KEY) or EVALENC for c in configs if c}
    if len(named) > 1:
        raise WeightsError(f"the unCLIP prior and decoder were trained on different image encoders {sorted(named)} "
                           f"(config key {IMAGE_ENCODER_KEY!r}, absent = {EVALENC!r}); they must share one "
                           "embedding space")
    return named.pop() if named else EVALENC


def load_image_encoder(component: str, weights_dir: str | Path | None = None, *, device="cpu",
                       dtype=torch.float32) -> nn.Module:
    """An image tower (kind ``image-encoder``) by component name from ``weights_dir`` (default: condiff's)."""
    from ..nn.image_encoder import ImageEncoder, ImageEncoderConfig
    from .registry import WEIGHTS_DIR

    folder = (Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR) / component
    if not (folder / "config.json").exists():
        hint = "train it with the job's evalenc stage" if component == EVALENC else "see its MODEL_CARD.md"
        raise ValueError(f"no image encoder weights in {folder} (component {component!r}); {hint}")
    net, _ = _load_component(folder, lambda c: ImageEncoder(ImageEncoderConfig.from_dict(c)), device, dtype)
    return net


def load_evalenc(weights_dir: str | Path | None = None, *, device="cpu", dtype=torch.float32) -> nn.Module:
    """The evaluation encoder ``condiff-evalenc`` (component ``evalenc``) from ``weights_dir`` (default:
    condiff's weights folder): what every built-in metric measures with. unCLIP itself loads the
    component its configs name (:func:`image_encoder_component`)."""
    return load_image_encoder(EVALENC, weights_dir, device=device, dtype=dtype)


def load_unclip(weights_dir: str | Path | None = None, *, device="cpu", dtype=torch.float32,
                text_encoder: TextEncoder | None = None, with_upsampler: bool = True) -> UnCLIPModel:
    """The built-in unCLIP model: ``unclip-decoder`` (required), ``unclip-prior``, the image encoder its
    configs name (:func:`image_encoder_component`: ``unclip-embedder``, or ``evalenc`` for configs
    without the key) and the cascade's SR stage (``cascade-sr``) when present."""
    from .registry import WEIGHTS_DIR

    root = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    dec_dir = root / UNCLIP_COMPONENTS["decoder"]
    if not (dec_dir / "config.json").exists():
        raise ValueError(f"no unCLIP decoder weights in {dec_dir}; train them with the unclip stage of `condiff train job`")
    decoder, dcfg = _load_component(dec_dir, lambda c: UnCLIPDecoder(DecoderConfig.from_dict(c)), device, dtype)
    prior, pcfg = None, {}
    if (root / UNCLIP_COMPONENTS["prior"] / "config.json").exists():
        prior, pcfg = _load_component(root / UNCLIP_COMPONENTS["prior"], lambda c: UnCLIPPrior(PriorConfig.from_dict(c)),
                                      device, dtype)
    encoder_name = image_encoder_component(dcfg, pcfg)
    image_encoder = (load_image_encoder(encoder_name, root, device=device, dtype=dtype)
                     if (root / encoder_name / "config.json").exists() else None)
    if text_encoder is None:
        from .registry import builtin_text_encoder as _text_encoder

        text_encoder = _text_encoder(int(dcfg.get("text_max_length", 24)))
    upsampler = None
    if with_upsampler and (root / "cascade-sr" / "config.json").exists():
        from .cascade import load_cascade

        upsampler = load_cascade(root, device=device, dtype=dtype, text_encoder=text_encoder, stages=("sr",))
    return UnCLIPModel(
        prior=prior, decoder=decoder, text_encoder=text_encoder, image_encoder=image_encoder,
        prior_schedule=_schedule(pcfg), decoder_schedule=_schedule(dcfg),
        prior_prediction=pcfg.get("prediction", "x0"), decoder_prediction=dcfg.get("prediction", "v"),
        decoder_size=int(dcfg.get("image_size", 64)), upsampler=upsampler,
        info={"default_guidance": float(dcfg.get("default_guidance", 3.0)),
              "prior_guidance": float(pcfg.get("default_guidance", 2.0)),
              "default_steps": int(dcfg.get("default_steps", 25)),
              "prior_steps": int(pcfg.get("default_steps", 25)), "image_encoder": encoder_name},
        image_encoder_component=encoder_name,
    )
