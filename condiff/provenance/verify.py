"""Read every stamp of a picture back and judge it: C2PA manifest, watermark, parameters.

:func:`read_png_info` is what ``condiff provenance verify``, the HTTP server and the UI call. A file
*verifies* (``ok``) when it has a C2PA manifest whose signature is valid, whose hash binding
matches the file's bytes and whose certificate chains to a trusted anchor (the local CA made by
``condiff provenance keygen``, ``CONDIFF_C2PA_TRUST`` or ``--trust``). Each way of failing is
listed in ``problems``: no manifest (stripped, or never signed), changed bytes (one flipped pixel
breaks the hash binding), an invalid signature, an untrusted signer (re-signed with another key).
The watermark and the parameters are reported alongside; they survive re-encoding that removes a
manifest, so a picture with the watermark but no manifest is reported as condiff-made and stripped.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from . import a1111, watermark
from .stamp import CONDIFF_KEY, PARAMETERS_KEY

__all__ = ["read_png_info", "read_text_parameters"]

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def _load(src: str | os.PathLike | bytes) -> tuple[bytes, str]:
    if isinstance(src, (bytes, bytearray)):
        return bytes(src), "<bytes>"
    path = Path(src)
    if not path.is_file():
        raise InputError(f"{path} does not exist; give an image file written by condiff or another tool")
    return path.read_bytes(), str(path)


def read_text_parameters(im: Image.Image) -> dict[str, Any]:
    """The text chunks of an open image: A1111 text, its parsed fields and condiff's JSON.

    Older condiff files kept JSON in ``parameters``; they read back as condiff parameters too.
    """
    text = getattr(im, "text", None) or im.info
    a1111_text, blob = text.get(PARAMETERS_KEY), text.get(CONDIFF_KEY)
    out: dict[str, Any] = {"a1111": None, "fields": None, "parameters": None, "provenance": None}
    if blob is not None:
        try:
            rec = json.loads(blob)
        except json.JSONDecodeError:
            raise InputError(f"the {CONDIFF_KEY!r} text chunk is not condiff's JSON") from None
        out["parameters"], out["provenance"] = rec.get("parameters"), rec.get("provenance")
    if isinstance(a1111_text, str):
        stripped = a1111_text.lstrip()
        if stripped.startswith("{"):
            try:
                legacy = json.loads(a1111_text)
            except json.JSONDecodeError:
                raise InputError(f"the {PARAMETERS_KEY!r} text chunk is neither A1111 text nor condiff's JSON") \
                    from None
            out["parameters"] = out["parameters"] if out["parameters"] is not None else legacy
        else:
            out["a1111"] = a1111_text
            out["fields"] = a1111.parse_infotext(a1111_text)
            if out["parameters"] is None:
                out["parameters"] = a1111.recipe_from_fields(out["fields"])
    return out


def _problems(manifest: dict[str, Any], mark: dict[str, Any], record: dict[str, Any] | None) -> list[str]:
    if not manifest.get("present"):
        if ((record or {}).get("c2pa") or {}).get("signed") is False:
            return ["no C2PA manifest: it was written without a signing key (run `condiff provenance keygen`)"]
        found = " (the watermark says condiff made it: the manifest was stripped)" if mark.get("found") else ""
        return ["no C2PA manifest" + found]
    out = []
    codes = {f["code"] for f in manifest.get("failures", [])}
    if not manifest.get("signature_valid"):
        out.append("the manifest's signature is not valid")
    if not manifest.get("hash_match"):
        out.append("the file's bytes changed after signing (hash binding mismatch)")
    if not manifest.get("trusted"):
        out.append("signed by a certificate that does not chain to a trusted anchor (another key)")
    other = codes - {"assertion.dataHash.mismatch", "signingCredential.untrusted"}
    out += [f"validation failure: {c}" for c in sorted(other)]
    return out


def read_png_info(src: str | os.PathLike | bytes, *, trust: list[Path] | None = None,
                  check_watermark: bool = True) -> dict[str, Any]:
    """Everything condiff can tell about a picture (PNG, JPEG or WebP; path or bytes).

    ``{"file", "format", "size", "a1111", "fields", "parameters", "provenance", "manifest",
    "watermark", "ok", "problems"}``; ``manifest`` and ``problems`` as described in the module doc.
    """
    from .c2pa_sign import read_manifest
    from .keys import trust_anchors

    data, name = _load(src)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            fmt, size = im.format, im.size
            info = read_text_parameters(im)
            rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{name} is not a readable image ({err})") from None
    manifest = read_manifest(data, _MIME.get(fmt, "image/png"), trust_anchors(trust))
    mark = watermark.detect(rgb) if check_watermark else {"found": None}
    problems = _problems(manifest, mark, info.get("provenance"))
    return {"file": name, "format": fmt, "size": list(size), **info, "manifest": manifest, "watermark": mark,
            "ok": not problems, "problems": problems}
