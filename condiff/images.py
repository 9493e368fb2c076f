"""Image and mask I/O conventions of condiff (what users of image-to-image tools expect).

* **Tensors**: images are float32 [1, C, H, W] in [0, 1] (C = 3, RGB); models that work in
  [−1, 1] convert with :func:`to_model_range` / :func:`from_model_range`. uint8 → float → uint8
  is lossless (v/255·255 rounds back to v), so a pixel-exact composite stays pixel-exact on disk.
* **Masks**: float32 [1, 1, H, W] in [0, 1], **white (1) = repaint**, black (0) = keep. Accepted
  as a grayscale (L) image, an RGB image (its luminance), or an RGBA image, whose colour is
  composited over black by its alpha (luminance × alpha): a brush layer of opaque white strokes
  on a transparent background marks the strokes. :func:`mask_from_alpha` reads the other common
  convention, an RGBA *picture* whose transparent pixels are the hole (mask = 1 − alpha).
* **Arrays and tensors** (uint8 0–255 or float 0–1; [H, W], [H, W, 3|4] or a [1, C, H, W]
  tensor) go through the same 8-bit decoding path as files, so a tensor and the PNG written from
  it load identically (float input is quantised to 1/255 steps).
* **Limits**: inputs over ``max_pixels`` (16 Mpx by default) are refused before decoding.
* **Resizing rule** (:func:`fit_image`, applied identically to an image and its mask): with a
  target size (W, H), scale so the image *covers* the target (preserving aspect ratio, Lanczos /
  area-style antialiasing) and center-crop the excess; with ``shorter_side=S``, scale so the
  shorter side is S; in every case then center-crop each side down to a multiple of 8 (never
  more than 7 px), as latent models with a downsampling factor of 8 need. Masks are resized with
  the same geometry (bilinear), so they stay aligned.
* **Saving**: :func:`save_png` writes a PNG atomically and refuses to overwrite an existing file
  unless ``overwrite=True``. The generation parameters go in two text chunks: ``parameters`` in
  AUTOMATIC1111's text format (what other tools read) and ``condiff`` with condiff's complete JSON;
  a model's picture also gets an invisible watermark and a signed C2PA manifest
  (:mod:`condiff.provenance`). :func:`read_png_parameters` reads the parameters back (also from
  older condiff files and A1111 files); :func:`read_png_info` reads and verifies everything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .errors import InputError, LimitError
from .io import atomic_path, check_writable

__all__ = [
    "MAX_PIXELS",
    "PARAMETERS_KEY",
    "ImageSource",
    "load_image",
    "load_mask",
    "mask_from_alpha",
    "fit_image",
    "fit_pair",
    "to_pil",
    "to_model_range",
    "from_model_range",
    "save_png",
    "png_bytes",
    "read_png_info",
    "read_png_parameters",
]

MAX_PIXELS = 16_000_000
PARAMETERS_KEY = "parameters"
ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray, Tensor]


# --------------------------------------------------------------------------- decoding


def _open(src: ImageSource, max_pixels: int, what: str) -> Image.Image:
    """Any accepted source as a loaded PIL image, with size limits checked before decoding."""
    if isinstance(src, (str, os.PathLike)):
        from .validate import check_input_file

        path = check_input_file(src, what)
        try:
            with Image.open(path) as im:
                _check_pixels(im.size, max_pixels, f"{what} {path}")
                im.load()
                return _unit_modes(im.copy(), f"{what} {path}")
        except (UnidentifiedImageError, Image.DecompressionBombError) as err:
            if isinstance(err, Image.DecompressionBombError):
                raise LimitError(f"{what} {path} is too large to decode safely ({err})") from None
            raise InputError(f"{what} {path} is not a readable image (PNG, JPEG, WebP, …)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            if isinstance(err, InputError):
                raise
            raise InputError(f"{what} {path} could not be decoded (truncated or corrupt: "
                             f"{' '.join(str(err).split())[:100]})") from None
    if isinstance(src, Image.Image):
        _check_pixels(src.size, max_pixels, what)
        return _unit_modes(src, what)
    if isinstance(src, Tensor):
        src = src.detach().cpu().numpy()
        if src.ndim == 4 and src.shape[0] == 1:
            src = src[0]
        if src.ndim == 3 and src.shape[0] in (1, 3, 4) and src.shape[-1] not in (1, 3, 4):
            src = np.moveaxis(src, 0, -1)  # CHW tensor → HWC array
    if isinstance(src, np.ndarray):
        return _from_array(src, max_pixels, what)
    raise InputError(f"{what} must be a path, PIL image, numpy array or tensor, got {type(src).__name__}")


def _unit_modes(im: Image.Image, what: str) -> Image.Image:
    """32-bit float ("F") and 16/32-bit integer ("I", "I;16") grey images as 8-bit "L".

    Float pictures (e.g. a float TIFF) in [0, 1] are scaled by 255, those in [0, 255] kept; integer
    pictures are read as 16-bit (÷ 257) when any value exceeds 255. Other ranges are an InputError.
    """
    if im.mode not in ("F", "I") and not im.mode.startswith("I;16"):
        return im
    a = np.asarray(im, dtype=np.float64)
    if not np.isfinite(a).all() or a.min() < 0:
        raise InputError(f"{what} holds negative or non-finite values; give a picture in [0, 1] or 0-255")
    hi = float(a.max())
    if im.mode == "F" and hi <= 1:
        a = a * 255
    elif hi > 255:
        if hi > 65535:
            raise InputError(f"{what} holds values up to {hi:g}, outside 0-65535; convert it to 8 or 16 bits")
        a = a / 257
    return Image.fromarray(np.round(a).astype(np.uint8), mode="L")


def _check_pixels(size: tuple[int, int], max_pixels: int, what: str) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise InputError(f"{what} is empty ({w}×{h})")
    if w * h > max_pixels:
        raise LimitError(
            f"{what} is {w}×{h} = {w * h / 1e6:.1f} Mpx, over the limit of {max_pixels / 1e6:.1f} Mpx; "
            "downscale it first or raise max_pixels"
        )


def _from_array(a: np.ndarray, max_pixels: int, what: str) -> Image.Image:
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise InputError(f"{what} array must be [H, W], [H, W, 3] or [H, W, 4], got shape {a.shape}")
    _check_pixels((a.shape[1], a.shape[0]), max_pixels, what)
    if a.dtype == np.uint8:
        u8 = a
    elif np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_:
        a = a.astype(np.float64)
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise InputError(f"a float {what} array must hold values in [0, 1]")
        u8 = np.round(a * 255).astype(np.uint8)
    else:
        raise InputError(f"{what} array must be uint8 (0-255) or float (0-1), got {a.dtype}")
    return Image.fromarray(np.ascontiguousarray(u8))


def _to_tensor(arr: np.ndarray) -> Tensor:
    """uint8 [H, W] or [H, W, C] → float32 [1, C, H, W] in [0, 1]."""
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()).float().div(255).unsqueeze(0)


def _check_size(t: Tensor, size: tuple[int, int] | None, what: str) -> Tensor:
    if size is not None and (t.shape[-1], t.shape[-2]) != tuple(size):
        raise InputError(
            f"{what} is {t.shape[-1]}×{t.shape[-2]} but {size[0]}×{size[1]} (W×H) is required; "
            "resize it (condiff.images.fit_image) or pass an image of that size"
        )
    return t


def load_image(src: ImageSource, *, size: tuple[int, int] | None = None, max_pixels: int = MAX_PIXELS) -> Tensor:
    """An RGB image as float32 [1, 3, H, W] in [0, 1] (transparent pixels composited over white).

    ``size`` = (W, H) demands that exact size (ValueError otherwise; resize with :func:`fit_image`).
    """
    im = _open(src, max_pixels, "image")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    return _check_size(_to_tensor(np.asarray(im.convert("RGB"))), size, "image")


def load_mask(src: ImageSource, *, size: tuple[int, int] | None = None, max_pixels: int = MAX_PIXELS) -> Tensor:
    """A mask as float32 [1, 1, H, W] in [0, 1], white = repaint (L, RGB luminance, or RGBA colour × alpha)."""
    im = _open(src, max_pixels, "mask")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA")).astype(np.float64)
        lum = np.asarray(im.convert("RGBA").convert("L")).astype(np.float64)
        arr = np.round(lum * rgba[..., 3] / 255).astype(np.uint8)
    else:
        arr = np.asarray(im.convert("L"))
    return _check_size(_to_tensor(arr), size, "mask")


def mask_from_alpha(src: ImageSource, *, size: tuple[int, int] | None = None, max_pixels: int = MAX_PIXELS) -> Tensor:
    """The hole of an RGBA picture as a mask: 1 − alpha (transparent = repaint; DALL·E's convention)."""
    im = _open(src, max_pixels, "image")
    if "A" not in im.getbands() and not (im.mode == "P" and "transparency" in im.info):
        raise InputError("this image has no alpha channel: give an RGBA image whose transparent pixels mark the hole")
    alpha = np.asarray(im.convert("RGBA"))[..., 3]
    return _check_size(_to_tensor(255 - alpha), size, "mask")


# --------------------------------------------------------------------------- geometry


def _fit_geometry(w: int, h: int, size: tuple[int, int] | None, shorter_side: int | None, multiple: int):
    """(scaled W, scaled H, crop box (left, top, right, bottom)) of the resizing rule."""
    if size is not None and shorter_side is not None:
        raise InputError("give either size=(W, H) or shorter_side, not both")
    if size is not None:
        tw, th = (int(v) for v in size)
        if tw < multiple or th < multiple:
            raise InputError(f"target size must be at least {multiple}×{multiple}, got {tw}×{th}")
        scale = max(tw / w, th / h)
        sw, sh = max(tw, round(w * scale)), max(th, round(h * scale))
    elif shorter_side is not None:
        if shorter_side < multiple:
            raise InputError(f"shorter_side must be ≥ {multiple}, got {shorter_side}")
        scale = shorter_side / min(w, h)
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        tw, th = sw, sh
    else:
        sw, sh, tw, th = w, h, w, h
    tw, th = tw - tw % multiple, th - th % multiple
    if tw < 1 or th < 1:
        raise InputError(f"image of {w}×{h} px is smaller than {multiple} px on a side; it cannot be used")
    left, top = (sw - tw) // 2, (sh - th) // 2
    return sw, sh, (left, top, left + tw, top + th)


def fit_image(
    x: Tensor, *, size: tuple[int, int] | None = None, shorter_side: int | None = None, multiple: int = 8
) -> Tensor:
    """Apply the resizing rule of the module doc to an image or mask tensor [B, C, H, W]."""
    if x.ndim != 4:
        raise InputError(f"expected [B, C, H, W], got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    sw, sh, (left, top, right, bottom) = _fit_geometry(w, h, size, shorter_side, multiple)
    if (sw, sh) != (w, h):
        shrink = sw < w or sh < h
        x = torch.nn.functional.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False, antialias=shrink)
        x = x.clamp(0, 1)
    return x[..., top:bottom, left:right]


def fit_pair(
    image: Tensor, mask: Tensor, *, size: tuple[int, int] | None = None, shorter_side: int | None = None, multiple: int = 8
) -> tuple[Tensor, Tensor]:
    """Check an image and its mask have the same size, then apply the same resizing rule to both."""
    if image.shape[-2:] != mask.shape[-2:]:
        raise InputError(
            f"mask size {mask.shape[-1]}×{mask.shape[-2]} differs from image size "
            f"{image.shape[-1]}×{image.shape[-2]} (W×H); give a mask drawn on this image"
        )
    kw = dict(size=size, shorter_side=shorter_side, multiple=multiple)
    return fit_image(image, **kw), fit_image(mask, **kw)


# --------------------------------------------------------------------------- conversions and saving


def to_model_range(x: Tensor) -> Tensor:
    """[0, 1] → [−1, 1]."""
    return x * 2 - 1


def from_model_range(x: Tensor) -> Tensor:
    """[−1, 1] → [0, 1] (clamped)."""
    return ((x + 1) / 2).clamp(0, 1)


def to_pil(x: Tensor) -> Image.Image:
    """A [1, C, H, W] or [C, H, W] tensor in [0, 1] (C = 1, 3 or 4) as an 8-bit PIL image (rounded)."""
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise InputError(f"to_pil takes one image; got a batch of {x.shape[0]} (index it first)")
        x = x[0]
    if x.ndim != 3 or x.shape[0] not in (1, 3, 4):
        raise InputError(f"expected an image [C, H, W] with C in (1, 3, 4), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        arr = x.detach().cpu().permute(1, 2, 0).numpy()
    else:
        from .validate import check_image_tensor

        x = check_image_tensor(x[None].detach().cpu(), "image", channels=None)[0]
        arr = (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if arr.shape[-1] == 1:
        return Image.fromarray(np.ascontiguousarray(arr[..., 0]))
    return Image.fromarray(np.ascontiguousarray(arr))


def save_png(
    image: Tensor | Image.Image, path: str | os.PathLike, parameters: dict[str, Any] | None = None, *,
    overwrite: bool = False, ingredients: list[str | os.PathLike] | None = None, provenance: bool | None = None,
) -> Path:
    """Write a stamped PNG atomically (no silent overwrite): see :func:`png_bytes` for the stamps.

    ``provenance=None`` stamps unless ``CONDIFF_PROVENANCE=0``; ``ingredients`` are the input files
    of an edit (default: the ``input``/``mask`` paths named in ``parameters``).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: save_png writes PNG files; use a .png file name")
    check_writable(path, overwrite)
    data = png_bytes(image, parameters, ingredients=ingredients, provenance=provenance)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def png_bytes(image: Tensor | Image.Image, params: dict[str, Any] | None = None, *,
              ingredients: list | None = None, provenance: bool | None = None) -> bytes:
    """The PNG file :func:`save_png` writes, in memory: A1111 ``parameters`` + ``condiff`` JSON text
    chunks, and for a model's picture the invisible watermark and a signed C2PA manifest
    (:func:`condiff.provenance.stamp.png_bytes`). ``ingredients``: input pictures of an edit, each a
    path, image bytes or (title, bytes)."""
    from .provenance.stamp import png_bytes as stamped

    return stamped(image, params, ingredients=ingredients, provenance=provenance)


def read_png_info(src: str | os.PathLike | bytes, **kw) -> dict[str, Any]:
    """Everything a picture says about itself: A1111 text, parsed fields, condiff JSON, C2PA
    manifest and watermark verification (:func:`condiff.provenance.verify.read_png_info`)."""
    from .provenance.verify import read_png_info as read

    return read(src, **kw)


def read_png_parameters(path: str | os.PathLike) -> dict[str, Any] | None:
    """The generation parameters of a PNG (None when it has none): condiff's JSON chunk, else the
    JSON older condiff versions kept in ``parameters``, else A1111 text parsed into condiff names."""
    from .provenance.verify import read_text_parameters

    with Image.open(path) as im:
        try:
            return read_text_parameters(im)["parameters"]
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
