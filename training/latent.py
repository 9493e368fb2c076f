"""Recipes: the built-in text-to-image latent U-Net and its inpainting variant (thesis 3.2.3).

Both train the ε-objective L_simple (thesis eq. 2.13) through the σ-space denoiser
(:class:`condiff.losses.DDPMEpsLoss`) on the scaled-linear schedule of Stable Diffusion, with the
frozen MiniLM token embeddings as cross-attention context (eq. 3.11–3.13).

* Caption dropout: with probability ``p_uncond`` (0.1) the context is replaced by the empty
  prompt's, so one network learns ε(x|c) and ε(x|∅) for classifier-free guidance (eq. 3.9).
* Inpainting: the U-Net gets 5 extra input channels — the mask (1) and the latent of the masked
  image (4) — zero-initialised in ``conv_in`` so training starts from the text-to-image model
  (SD inpainting recipe); a quarter of the masks cover the whole image, a fifth the whole subject
  (:func:`random_masks`).

Data are pre-encoded once: latent posterior means/stds [N, 4, 32, 32] and the context of every
caption variant [N, K, L, 384], both on the GPU, so a step is pure U-Net work.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from condiff.denoisers import Cond, NetworkDenoiser
from condiff.evaluation.inpainting import subject_masks
from condiff.losses import DDPMEpsLoss
from condiff.nn.unet import UNet, UNetConfig

__all__ = [
    "builtin_unet_config", "TextToImageObjective", "InpaintObjective", "inpaint_unet_from", "random_masks",
    "inpaint_bank", "pick_context", "sample_latents", "encode_posteriors", "MASK_MIXTURE",
    "SUBJECT_DILATION",
]


def builtin_unet_config(in_channels: int = 4, decoder_depth: int = 3, dropout: float = 0.0) -> UNetConfig:
    """The built-in U-Net: attention at 16² and 8² latents, 16.3 M parameters as shipped.

    ``decoder_depth`` stacks that many transformer blocks in each of the expansive path's spatial
    transformers (``reverse_transformer_layers_per_block``); the contracting path, which a ControlNet
    copies, does not depend on it. The shipped ``ldm`` has 3 (grown from a depth-1 network by
    :func:`condiff.train.grow.grow_into`); depth 1 is the 11.5 M-parameter network the
    shipped ``ldm-inpaint`` and the ControlNets' encoders were trained from. ``dropout`` is the training-time
    dropout probability of the residual and transformer blocks (Ho et al. 2020 use 0.1 on CIFAR-10); it has no
    parameters, so any value loads any weights, and inference (``eval()``) ignores it.
    """
    if decoder_depth < 1:
        raise ValueError(f"decoder_depth must be at least 1, got {decoder_depth}")
    attention = (False, True, True)
    return UNetConfig(
        in_channels=in_channels, out_channels=4, sample_size=32, block_out_channels=(64, 128, 192),
        attention_levels=attention, layers_per_block=1, num_attention_heads=(1, 2, 3),
        cross_attention_dim=384, use_linear_projection=True, dropout=float(dropout),
        reverse_transformer_layers_per_block=None if decoder_depth == 1 else tuple(
            decoder_depth if a else 1 for a in reversed(attention)),
    )


def pick_context(ctx_bank: Tensor, empty: Tensor, p_uncond: float, g: torch.Generator) -> Tensor:
    """One caption variant per sample, replaced by the empty prompt with probability p_uncond."""
    b, k = ctx_bank.shape[:2]
    variant = torch.randint(0, k, (b,), generator=g, device=g.device).to(ctx_bank.device)
    ctx = ctx_bank[torch.arange(b, device=ctx_bank.device), variant].float()
    drop = (torch.rand(b, generator=g, device=g.device) < p_uncond).to(ctx.device)
    return torch.where(drop[:, None, None], empty.to(ctx.dtype).expand_as(ctx), ctx)


@torch.no_grad()
def encode_posteriors(vae: nn.Module, images: Tensor, device, *, batch: int = 256) -> tuple[Tensor, Tensor]:
    """VAE posterior mean and std (fp16) of uint8 ``images`` [N, 3, H, W], encoded in chunks of ``batch``."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(device).float() / 127.5 - 1
        post = vae.encode(x)
        means.append(post.mean.half())
        stds.append(post.std.half())
    return torch.cat(means), torch.cat(stds)


def sample_latents(mean: Tensor, std: Tensor, scale: float, g: torch.Generator) -> Tensor:
    eps = torch.randn(mean.shape, generator=g, device=g.device).to(mean.device)
    return (mean.float() + std.float() * eps) * scale


class TextToImageObjective:
    """Batch dict: mean, std (latent posterior), ctx (caption contexts [B, K, L, D])."""

    def __init__(self, denoiser: NetworkDenoiser, schedule, empty_context: Tensor, scaling_factor: float,
                 p_uncond: float = 0.1):
        self.loss = DDPMEpsLoss(schedule)
        self.denoiser = denoiser
        self.empty = empty_context
        self.scale = scaling_factor
        self.p_uncond = p_uncond

    def __call__(self, model: nn.Module, batch: dict, g: torch.Generator) -> Tensor:
        z = sample_latents(batch["mean"], batch["std"], self.scale, g)
        ctx = pick_context(batch["ctx"], self.empty, self.p_uncond, g)
        return self.loss(self.denoiser, z, Cond(context=ctx), g)


#: the inpainting training masks' mixture: kind -> probability (whole picture first, as in SD inpainting)
MASK_MIXTURE = {"full": 0.25, "region": 0.15, "subject": 0.20, "box": 0.20, "strokes": 0.20}
#: dilation radii (pixels) of the "subject" masks, one drawn per sample
SUBJECT_DILATION = (2, 4, 6, 8)


def random_masks(regions: Tensor, g: torch.Generator, mixture: dict[str, float] | None = None) -> Tensor:
    """Inpainting masks [B, 1, H, W] in {0, 1} (1 = repaint) drawn on the GPU.

    Kinds (:data:`MASK_MIXTURE`): the whole image ("full", 25 %, the SD inpainting recipe); one
    object/region of the picture from its vector layers ("region"); the whole subject — every
    non-background layer — dilated by 2–8 px ("subject": object replacement, where only the prompt
    says what goes inside); a random box of 10–60 % of the side ("box"); three thick random strokes
    ("strokes"). A region or subject pick that hits nothing falls back to the whole image.
    """
    mixture = MASK_MIXTURE if mixture is None else mixture
    unknown = set(mixture) - set(MASK_MIXTURE)
    if unknown or not mixture or any(v < 0 for v in mixture.values()) or sum(mixture.values()) <= 0:
        raise ValueError(f"mask mixture needs non-negative weights over {list(MASK_MIXTURE)}, got {mixture}")
    b, h, w = regions.shape
    dev = regions.device
    names = list(MASK_MIXTURE)
    probs = torch.tensor([float(mixture.get(k, 0.0)) for k in names])
    cum = (probs.cumsum(0) / probs.sum()).to(dev)
    u = torch.rand(b, generator=g, device=g.device).to(dev)
    kind = torch.searchsorted(cum, u, right=True).clamp(max=len(names) - 1)
    ys = torch.arange(h, device=dev).view(1, h, 1).float()
    xs = torch.arange(w, device=dev).view(1, 1, w).float()
    # region masks: pick one non-background layer index per sample
    nreg = regions.flatten(1).amax(1).clamp(min=1).float()
    pick = (torch.rand(b, generator=g, device=g.device).to(dev) * nreg).floor() + 1
    region = (regions.float() == pick.view(b, 1, 1)).float()
    # subject masks: all non-background layers, dilated by a radius drawn per sample
    dil = torch.cat([subject_masks(regions, r) for r in SUBJECT_DILATION], 1)
    which = torch.randint(0, len(SUBJECT_DILATION), (b,), generator=g, device=g.device).to(dev)
    subject = dil[torch.arange(b, device=dev), which]
    # boxes
    r = torch.rand(b, 4, generator=g, device=g.device).to(dev)
    bh, bw = (0.1 + 0.5 * r[:, 0]) * h, (0.1 + 0.5 * r[:, 1]) * w
    y0, x0 = r[:, 2] * (h - bh), r[:, 3] * (w - bw)
    box = ((ys >= y0.view(b, 1, 1)) & (ys < (y0 + bh).view(b, 1, 1)) & (xs >= x0.view(b, 1, 1))
           & (xs < (x0 + bw).view(b, 1, 1))).float()
    # strokes: union of 3 thick line segments
    stroke = torch.zeros(b, h, w, device=dev)
    for _ in range(3):
        p = torch.rand(b, 5, generator=g, device=g.device).to(dev)
        ax, ay, bx, by = p[:, 0] * w, p[:, 1] * h, p[:, 2] * w, p[:, 3] * h
        width = 4 + 10 * p[:, 4]
        dx, dy = (bx - ax).view(b, 1, 1), (by - ay).view(b, 1, 1)
        t = (((xs - ax.view(b, 1, 1)) * dx + (ys - ay.view(b, 1, 1)) * dy) / (dx**2 + dy**2 + 1e-6)).clamp(0, 1)
        dist = ((xs - ax.view(b, 1, 1) - t * dx) ** 2 + (ys - ay.view(b, 1, 1) - t * dy) ** 2).sqrt()
        stroke = torch.maximum(stroke, (dist < width.view(b, 1, 1) / 2).float())
    full = torch.ones(b, h, w, device=dev)
    masks = torch.stack([full, region, subject, box, stroke], 1)[torch.arange(b, device=dev), kind]
    empty = masks.flatten(1).amax(1) == 0  # a region/subject pick that hit nothing -> whole image
    masks[empty] = 1.0
    return masks[:, None]


@torch.no_grad()
def inpaint_bank(vae: nn.Module, images: Tensor, regions: Tensor, scale: float, g: torch.Generator,
                 per_image: int = 4, batch: int = 256) -> tuple[Tensor, Tensor]:
    """Pre-drawn masks at latent resolution [N, P, 1, h, w] (bool) and masked-image latents [N, P, 4, h, w].

    Encoding the masked image is the expensive part of an inpainting step, so each record gets
    ``per_image`` masks once (seeded) and a step picks one of them.
    """
    device = next(vae.parameters()).device
    masks_all, zm_all = [], []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(device).float() / 127.5 - 1
        reg = regions[i:i + batch].to(device)
        ms, zs = [], []
        for _ in range(per_image):
            m = random_masks(reg, g)
            zm = vae.encode(x * (1 - m)).mean.float() * scale
            ms.append(torch.nn.functional.interpolate(m, size=zm.shape[-2:], mode="area") > 0)
            zs.append(zm.half())
        masks_all.append(torch.stack(ms, 1))
        zm_all.append(torch.stack(zs, 1))
    return torch.cat(masks_all), torch.cat(zm_all)


class InpaintObjective(TextToImageObjective):
    """Batch dict: mean, std (latent posterior), ctx [B, K, L, D], masks [B, P, 1, h, w], zm [B, P, 4, h, w].

    ε-loss with ``cond.concat = [mask, z_masked]`` (the SD inpainting input layout: 1 + 4 channels).
    """

    def __call__(self, model: nn.Module, batch: dict, g: torch.Generator) -> Tensor:
        z = sample_latents(batch["mean"], batch["std"], self.scale, g)
        b, p = batch["masks"].shape[:2]
        pick = torch.randint(0, p, (b,), generator=g, device=g.device).to(z.device)
        rows = torch.arange(b, device=z.device)
        m_lat = batch["masks"][rows, pick].float()
        zm = batch["zm"][rows, pick].float()
        ctx = pick_context(batch["ctx"], self.empty, self.p_uncond, g)
        return self.loss(self.denoiser, z, Cond(context=ctx, concat=torch.cat([m_lat, zm], 1)), g)


def inpaint_unet_from(unet: UNet) -> UNet:
    """A 9-channel U-Net initialised from a 4-channel one; the 5 new input channels start at zero."""
    cfg = UNetConfig.from_dict({**unet.config.to_dict(), "in_channels": unet.config.in_channels + 5})
    new = UNet(cfg).to(next(unet.parameters()).device)
    state = unet.state_dict()
    w = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], 5, *w.shape[2:])], 1)
    new.load_state_dict(state)
    return new
