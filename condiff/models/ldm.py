"""A latent diffusion model as one object: U-Net + KL autoencoder + text encoder + schedule.

Latent diffusion (Rombach et al. 2022; thesis 3.2.3, Fig. 3.7) runs the diffusion process on
z = scaling_factor · E(x) and decodes the result with the autoencoder's decoder. Both condiff's
built-in models and Stable Diffusion 1.x/2.x checkpoints load into this same class, so every
pipeline (text-to-image, SDEdit, ControlNet, inpainting, personalization) has one code path.

Precision safety: :meth:`LatentDiffusion.decode` checks the decoded image for NaN/inf (the
"black image" of fp16 VAEs) and retries in fp32; if that fails too it raises instead of writing
a black picture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..denoisers import Cond, NetworkDenoiser, DiscreteTime
from ..errors import NonFiniteError
from ..schedules import DiscreteSchedule

__all__ = ["LatentDiffusion", "NonFiniteOutputError"]


class NonFiniteOutputError(NonFiniteError):
    """The model produced NaN/inf even in fp32 (e.g. a broken checkpoint or extreme guidance)."""


@dataclass
class LatentDiffusion:
    """Everything needed to turn prompts into images in latent space.

    ``unet`` predicts ``prediction`` ("eps" or "v") on the discrete ``schedule``;
    ``text_encoder(prompts) -> (context, mask)``; ``vae`` has ``encode(x).mean / .sample()``
    and ``decode(z)``; ``scaling_factor`` maps VAE latents to unit variance.
    ``inpaint_unet`` (optional) is the dedicated inpainting U-Net with 5 extra input channels.
    """

    name: str
    unet: nn.Module
    vae: nn.Module
    text_encoder: Any
    schedule: DiscreteSchedule
    prediction: str = "eps"
    scaling_factor: float = 0.18215
    image_size: int = 512
    inpaint_unet: nn.Module | None = None
    use_context_mask: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    decode_tile: tuple[int, int] | None = None  # (tile, overlap) in latent pixels: tiled VAE decode

    # ------------------------------------------------------------------ structure
    @property
    def latent_channels(self) -> int:
        return int(getattr(self.vae.config, "latent_channels", 4))

    @property
    def downscale(self) -> int:
        return int(2 ** (len(self.vae.config.block_out_channels) - 1))

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device=None, dtype=None) -> "LatentDiffusion":
        for m in (self.unet, self.vae, self.inpaint_unet):
            if m is not None:
                m.to(device=device, dtype=dtype)
        if self.text_encoder is not None and hasattr(self.text_encoder, "to"):
            self.text_encoder.to(device=device)
        return self

    def eval(self) -> "LatentDiffusion":
        for m in (self.unet, self.vae, self.inpaint_unet):
            if m is not None:
                m.eval()
        return self

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.downscale
        if height % f or width % f:
            raise ValueError(f"image size {width}x{height} must be a multiple of {f} for this model")
        return (self.latent_channels, height // f, width // f)

    # ------------------------------------------------------------------ denoisers
    def denoiser(self, unet: nn.Module | None = None) -> NetworkDenoiser:
        """The σ-space denoiser of the U-Net (or of another network with the same schedule)."""
        net = unet if unet is not None else self.unet
        return NetworkDenoiser(
            net, self.prediction, DiscreteTime(self.schedule),
            sigma_min=self.schedule.sigma_min, sigma_max=self.schedule.sigma_max,
        )

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        if isinstance(prompts, str):
            prompts = [prompts]
        ctx, mask = self.text_encoder(list(prompts))
        return Cond(
            context=ctx.to(self.device, self.dtype),
            context_mask=mask.to(self.device) if self.use_context_mask else None,
        )

    # ------------------------------------------------------------------ autoencoder
    @torch.no_grad()
    def encode(self, images: Tensor, generator: torch.Generator | None = None, sample: bool = False) -> Tensor:
        """Images in [-1, 1], [B, 3, H, W] -> scaled latents (posterior mean unless ``sample``)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        vae_dtype = next(self.vae.parameters()).dtype
        post = self.vae.encode(images.to(self.device, vae_dtype))
        z = post.sample(generator) if sample else post.mean
        return z.float() * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents -> images in [-1, 1]; NaN/inf output is retried in fp32, then refused."""
        vae_dtype = next(self.vae.parameters()).dtype
        z = latents / self.scaling_factor
        out = self._decode(z, vae_dtype)
        if not torch.isfinite(out).all():
            if vae_dtype == torch.float32:
                raise NonFiniteOutputError("the autoencoder produced NaN/inf; the latents are not finite")
            self.vae.float()
            try:
                out = self._decode(z, torch.float32)
            finally:
                self.vae.to(vae_dtype)
            if not torch.isfinite(out).all():
                raise NonFiniteOutputError("the autoencoder produced NaN/inf even in fp32")
            self.info["vae_fp32_retry"] = True
        return out.clamp(-1, 1)

    def _decode(self, z: Tensor, dtype: torch.dtype) -> Tensor:
        """VAE decode in ``dtype`` (float32 result), in tiles when ``decode_tile`` is set."""

        def run(t: Tensor) -> Tensor:
            return self.vae.decode(t.to(self.device, dtype))

        if self.decode_tile is None:
            return run(z).float()
        from ..acceleration import tiled_decode

        tile, overlap = self.decode_tile
        return tiled_decode(run, z, tile, overlap, scale=self.downscale)
