"""Images in and out of the HTTP API: base64 decoding with limits, PNG encoding with provenance, PNG info.

* :func:`decode_image` / :func:`decode_mask`: a base64 string (raw or a ``data:image/...;base64,``
  URL) → condiff's image/mask tensor (:mod:`condiff.images` conventions). The base64 alphabet is
  validated, the image header is read and its pixel count checked against ``--max-image-pixels``
  *before* the pixels are decoded (decompression bombs), and every failure is an
  :class:`~condiff.errors.InputError`/:class:`~condiff.errors.LimitError` naming the request field.
  Nothing here ever opens a path: requests carry image data, never server file names.
* :func:`png_base64`: the one place results become PNGs, with the provenance stamps of every
  condiff output (:func:`condiff.images.png_bytes`: A1111 ``parameters`` text, condiff's JSON,
  invisible watermark, C2PA manifest when a key exists).
* :func:`png_info`: the one place PNG metadata is read back (``/sdapi/v1/png-info``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import warnings
from typing import Any

from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..errors import InputError, LimitError
from ..provenance.stamp import CONDIFF_KEY
from ..images import PARAMETERS_KEY, load_image, load_mask, png_bytes, read_png_parameters

__all__ = ["decode_bytes", "decode_image", "decode_mask", "infotext_pairs", "open_image", "png_base64", "png_info"]

_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.I)


def decode_bytes(data: str, field: str) -> bytes:
    """Raw bytes of a base64 payload (data-URL prefix allowed); InputError naming ``field`` otherwise."""
    if not isinstance(data, str) or not data.strip():
        raise InputError(f"{field}: expected a base64-encoded image, got an empty value")
    text = _DATA_URL.sub("", data.strip(), count=1)
    text = "".join(text.split())
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{field}: not valid base64; send the image file's bytes base64-encoded") from None


def open_image(data: str, field: str, max_pixels: int) -> Image.Image:
    """A decoded PIL image whose size was checked against ``max_pixels`` before its pixels were read."""
    raw = decode_bytes(data, field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(raw))
            w, h = im.size
            if w * h > max_pixels:
                raise LimitError(f"{field}: image of {w}×{h} = {w * h} px is over the server's limit of "
                                 f"{max_pixels} px (flag --max-image-pixels)")
            im.load()
    except LimitError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise LimitError(f"{field}: image is too large to decode safely (flag --max-image-pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InputError(f"{field}: not a readable image (PNG, JPEG or WebP)") from None
    return im


def decode_image(data: str, field: str, max_pixels: int) -> Tensor:
    """An RGB image float32 [1, 3, H, W] in [0, 1] (:func:`condiff.images.load_image`)."""
    return load_image(open_image(data, field, max_pixels), max_pixels=max_pixels)


def decode_mask(data: str, field: str, max_pixels: int) -> Tensor:
    """A mask float32 [1, 1, H, W] in [0, 1], white = repaint (:func:`condiff.images.load_mask`)."""
    return load_mask(open_image(data, field, max_pixels), max_pixels=max_pixels)


def png_base64(image: Tensor, params: dict[str, Any] | None, ingredients: list | None = None) -> str:
    """One image [1, 3, H, W] in [0, 1] as a base64 PNG with the stamps of every condiff output
    (A1111 ``parameters``, condiff JSON, watermark and C2PA manifest: :func:`condiff.images.png_bytes`)."""
    return base64.b64encode(png_bytes(image, params or {}, ingredients=ingredients)).decode("ascii")


def png_info(data: str, field: str, max_pixels: int) -> dict[str, Any]:
    """A1111 ``png-info`` answer: ``info`` (the parameters text), ``items`` (other text chunks),
    ``parameters`` (condiff's JSON parameters, or the ``Key: value`` pairs of an A1111 infotext)."""
    im = open_image(data, field, max_pixels)
    texts = {k: v for k, v in getattr(im, "text", {}).items() if isinstance(v, str)}
    text = texts.pop(PARAMETERS_KEY, "")
    ours = CONDIFF_KEY in texts or text.lstrip().startswith("{")  # condiff's JSON chunk, or an older condiff file
    texts.pop(CONDIFF_KEY, None)
    if ours:
        try:
            params = read_png_parameters(io.BytesIO(decode_bytes(data, field))) or {}
        except ValueError:
            raise InputError(f"{field}: its condiff parameters are not valid JSON") from None
    else:
        params = infotext_pairs(text)
    return {"info": text, "items": texts, "parameters": params, "format": "condiff" if ours else "a1111"}


def infotext_pairs(text: str) -> dict[str, Any]:
    """``prompt``, ``negative_prompt`` and the ``Key: value`` pairs of an A1111 infotext."""
    lines = text.strip().splitlines()
    if not lines:
        return {}
    out: dict[str, Any] = {}
    last = lines[-1] if re.search(r"\bSteps: ", lines[-1]) else ""
    body = lines[:-1] if last else lines
    neg = [i for i, ln in enumerate(body) if ln.startswith("Negative prompt: ")]
    cut = neg[0] if neg else len(body)
    out["prompt"] = "\n".join(body[:cut])
    if neg:
        out["negative_prompt"] = "\n".join(body[cut:])[len("Negative prompt: "):]
    for key, value in re.findall(r'\s*([\w ./-]+):\s*("(?:\\.|[^"])*"|[^,]*)(?:,|$)', last):
        out[key.strip()] = json.loads(value) if value.startswith('"') else value.strip()
    return out
