"""What the studio's drawing canvases hold, turned into condiff's images and masks (no maths).

A gradio ``ImageEditor`` value is ``{"background": RGBA|None, "layers": [RGBA, …], "composite":
RGBA|None}`` (uint8 numpy arrays [H, W, 4]). The studio reads it two ways:

* **a picture** (a sketch, an edited condition map): the composite, decoded by
  :func:`condiff.images.load_image` (transparent pixels over white, i.e. paper);
* **a mask painted over a picture** (inpainting): the picture is the background, the mask is where
  any layer was painted (the largest alpha of the layers, 8-bit, white = repaint, the convention
  of :func:`condiff.images.load_mask`), whatever colour the brush had.

Every decode goes through :mod:`condiff.images` with the server's pixel limit, so the studio and
``condiff sdedit IMAGE`` / ``condiff inpaint IMAGE MASK`` read the same files into the same tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..compositing import border_bands, composite
from ..errors import InputError
from ..images import MAX_PIXELS, load_image, load_mask

__all__ = ["editor_picture", "editor_background", "editor_mask", "editor_value", "mask_outline"]


def _array(value: Any, key: str) -> np.ndarray | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InputError(f"the canvas sent {type(value).__name__}, not an editor value; reload the page")
    arr = value.get(key)
    return None if arr is None else np.asarray(arr)


def _flatten(value: dict) -> np.ndarray | None:
    """Background and layers stacked (alpha compositing), for a value that arrived without its composite."""
    parts = [np.asarray(p) for p in [value.get("background"), *(value.get("layers") or [])] if p is not None]
    parts = [p for p in parts if p.ndim == 3 and p.shape[-1] == 4 and p.shape[:2] == parts[0].shape[:2]]
    if not parts:
        return None
    out = Image.fromarray(parts[0])
    for p in parts[1:]:
        out = Image.alpha_composite(out, Image.fromarray(p))
    return np.asarray(out)


def editor_picture(value: Any, what: str = "sketch", max_pixels: int = MAX_PIXELS) -> Tensor:
    """The composite of an editor (background + every layer) as an image [1, 3, H, W] in [0, 1]."""
    arr = _array(value, "composite")
    if arr is None or arr.size == 0:
        arr = _flatten(value) if isinstance(value, dict) else None
    if arr is None or arr.size == 0 or (arr.ndim == 3 and arr.shape[-1] == 4 and not arr[..., 3].any()):
        raise InputError(f"the {what} canvas is empty; draw or upload a picture first")
    return load_image(arr, max_pixels=max_pixels)


def editor_background(value: Any, what: str = "image", max_pixels: int = MAX_PIXELS) -> Tensor:
    """The uploaded picture under the painted layers, [1, 3, H, W] in [0, 1]."""
    arr = _array(value, "background")
    if arr is None or arr.size == 0:
        raise InputError(f"no {what} was uploaded; drop a picture on the canvas first")
    return load_image(arr, max_pixels=max_pixels)


def editor_mask(value: Any, max_pixels: int = MAX_PIXELS) -> Tensor:
    """The painted strokes as a mask [1, 1, H, W] in [0, 1] (largest alpha over the layers)."""
    background = _array(value, "background")
    layers = [np.asarray(layer) for layer in (value or {}).get("layers") or [] if layer is not None]
    if background is None or not layers:
        raise InputError("no mask was painted; paint over the part to replace with the brush")
    alpha = np.zeros(background.shape[:2], dtype=np.uint8)
    for layer in layers:
        if layer.shape[:2] != alpha.shape:
            raise InputError(f"a mask layer is {layer.shape[1]}×{layer.shape[0]} but the picture is "
                             f"{alpha.shape[1]}×{alpha.shape[0]}; clear the canvas and paint again")
        if layer.ndim == 3 and layer.shape[-1] == 4:
            alpha = np.maximum(alpha, layer[..., 3])
    if not alpha.any():
        raise InputError("the mask is empty; paint over the part to replace with the brush")
    return load_mask(alpha, max_pixels=max_pixels)


def editor_value(picture: np.ndarray | None) -> dict[str, Any]:
    """An editor value showing ``picture`` with no layers (to load a result back into a canvas)."""
    return {"background": picture, "layers": [], "composite": picture}


def mask_outline(image: Tensor, mask: Tensor, color: tuple[float, float, float] = (1.0, 0.15, 0.1),
                 width: int = 1) -> Tensor:
    """``image`` with the border of ``mask`` drawn in ``color`` (the outer band of
    :func:`condiff.compositing.border_bands`), to see where the repainted region lies."""
    _, outer = border_bands(mask, width)
    paint = torch.tensor(color, dtype=image.dtype).view(1, 3, 1, 1).expand_as(image)
    return composite(image, paint, outer)
