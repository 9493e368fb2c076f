"""Networks: the conditional U-Net (thesis §2.6), the KL autoencoder (§3.2.3) and ControlNet (§3.1.3).

Their state-dict keys equal diffusers' ``UNet2DConditionModel``, ``AutoencoderKL`` and
``ControlNetModel``, so Stable Diffusion 1.x/2.x weights in diffusers layout load with
``load_state_dict(strict=True)`` and no key mapping.
"""

from .autoencoder import AUTOENCODER_PRESETS, AutoencoderConfig, AutoencoderKL, DiagonalGaussian
from .controlnet import ControlledUNet, ControlNet, ControlNetConfig, sum_controls
from .unet import UNET_PRESETS, UNet, UNetConfig, UNetEncoder, count_parameters

__all__ = [
    "UNet",
    "UNetConfig",
    "UNetEncoder",
    "UNET_PRESETS",
    "AutoencoderKL",
    "AutoencoderConfig",
    "AUTOENCODER_PRESETS",
    "DiagonalGaussian",
    "ControlNet",
    "ControlNetConfig",
    "ControlledUNet",
    "sum_controls",
    "count_parameters",
]
