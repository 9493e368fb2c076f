"""The PNG writer's stamps, in order: invisible watermark → text chunks → signed C2PA manifest.

Every PNG written with parameters carries two text chunks:

* ``parameters``: AUTOMATIC1111's infotext (:mod:`condiff.provenance.a1111`), read by A1111's
  "PNG Info", ComfyUI and image-sharing sites; ``tEXt`` when the text is Latin-1, else ``iTXt``
  (UTF-8), as A1111 writes it;
* ``condiff``: ASCII JSON ``{"format": "condiff/1", "parameters": {…complete…}, "provenance": {…}}``
  with the model and LoRA hashes and the watermark record.

For a picture a model made (its parameters name a ``model``) and unless provenance is switched off
(``provenance=False``, ``--no-provenance`` or ``CONDIFF_PROVENANCE=0``):

1. the pixels get the invisible watermark (:mod:`condiff.provenance.watermark`) — except for
   inpainting that returns the input exactly outside the mask, whose guarantee it would break,
   and when ``CONDIFF_WATERMARK=0`` (the record says which);
2. the PNG (pixels + text chunks) is signed with a C2PA manifest (:mod:`condiff.provenance.c2pa_sign`)
   when a signing key is available (:mod:`condiff.provenance.keys`); without one the record says
   how to make one. The manifest's hash binding covers the text chunks and the pixels.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from .. import __version__
from . import a1111, hashes, watermark

__all__ = ["PARAMETERS_KEY", "CONDIFF_KEY", "FORMAT", "enabled", "png_bytes", "text_chunks", "stamp_record"]

PARAMETERS_KEY = "parameters"
CONDIFF_KEY = "condiff"
FORMAT = "condiff/1"


def enabled(provenance: bool | None) -> bool:
    """``provenance`` when given, else on unless ``CONDIFF_PROVENANCE`` is 0/false/off."""
    if provenance is not None:
        return bool(provenance)
    return os.environ.get("CONDIFF_PROVENANCE", "1").strip().lower() not in ("0", "false", "off", "no")


def _jsonable(v: Any):
    import torch

    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (Path, os.PathLike)):
        return str(v)
    raise TypeError(f"{type(v).__name__} is not JSON-serialisable")


def normalise(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as plain JSON values (tensors, numpy scalars and paths converted)."""
    try:
        return json.loads(json.dumps(params, default=_jsonable))
    except (TypeError, ValueError) as err:
        raise ValueError(f"generation parameters are not JSON-serialisable: {err}") from None


def _keeps_input_pixels(params: dict[str, Any]) -> bool:
    return "inpaint" in str(params.get("pipeline", "")) and bool(params.get("composite", True))


def stamp_record(params: dict[str, Any]) -> dict[str, Any]:
    """Hashes of the model and LoRA files named in ``params`` (A1111 conventions)."""
    rec: dict[str, Any] = {}
    mh = hashes.model_hash(str(params["model"])) if params.get("model") else None
    if mh:
        rec["model_hash"] = mh
    lh = hashes.lora_hashes(params.get("loras"))
    if lh:
        rec["lora_hashes"] = lh
    return rec


def text_chunks(params: dict[str, Any], record: dict[str, Any], size: tuple[int, int]) -> PngImagePlugin.PngInfo:
    """The ``parameters`` (A1111) and ``condiff`` (JSON) text chunks."""
    info = PngImagePlugin.PngInfo()
    text = a1111.format_infotext(params, size=size, model_hash=record.get("model_hash"),
                                 lora_hashes=record.get("lora_hashes"), version=f"condiff {__version__}")
    info.add_text(PARAMETERS_KEY, text)  # tEXt when Latin-1, else iTXt (as A1111 writes it)
    blob = {"format": FORMAT, "parameters": params, "provenance": record}
    info.add_text(CONDIFF_KEY, json.dumps(blob, ensure_ascii=True, sort_keys=True))
    return info


def _watermarked(im: Image.Image, params: dict[str, Any]) -> tuple[Image.Image, dict]:
    """The picture with the invisible watermark, or unchanged with the reason, and the record."""
    skip = None
    if _keeps_input_pixels(params):
        skip = "inpainting keeps the input's pixels outside the mask exactly"
    elif os.environ.get("CONDIFF_WATERMARK", "1").strip().lower() in ("0", "false", "off", "no"):
        skip = "CONDIFF_WATERMARK=0"
    elif im.mode != "RGB":
        skip = f"{im.mode} is not RGB"
    if skip:
        return im, {"method": watermark.METHOD, "embedded": False, "reason": skip}
    arr, rec = watermark.embed(np.asarray(im))
    return Image.fromarray(arr), rec


def _default_ingredients(params: dict[str, Any]) -> list[Path]:
    return [Path(str(params[k])) for k in ("input", "mask") if params.get(k) and Path(str(params[k])).is_file()]


def png_bytes(image, params: dict[str, Any] | None = None, *, ingredients: list | None = None,
              provenance: bool | None = None) -> bytes:
    """Encode ``image`` (tensor [1, C, H, W] / [C, H, W] in [0, 1] or PIL image) as a stamped PNG.

    ``ingredients``: the input pictures of an edit, each a file path, image bytes or (title, bytes)
    (default: the ``input``/``mask`` files named in ``params``).
    ``provenance``: True (watermark + C2PA when a key exists), False (text chunks only), None (the
    default: on unless ``CONDIFF_PROVENANCE=0``).
    """
    from ..images import to_pil

    im = image if isinstance(image, Image.Image) else to_pil(image)
    if not params:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()
    params = normalise(params)
    record = stamp_record(params)
    stamped = enabled(provenance) and bool(params.get("model"))
    creds = None
    if stamped:
        from .keys import load_credentials

        creds = load_credentials()
        if creds is None:
            record["c2pa"] = {"signed": False, "reason": "no signing key (run `condiff provenance keygen`)"}
        im, record["watermark"] = _watermarked(im, params)
    buf = io.BytesIO()
    im.save(buf, format="PNG", pnginfo=text_chunks(params, record, im.size))
    data = buf.getvalue()
    if creds is not None:
        from .c2pa_sign import sign_png

        files = _default_ingredients(params) if ingredients is None else list(ingredients)
        data = sign_png(data, params, record, creds, ingredients=files)
    return data
