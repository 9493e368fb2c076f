"""The "PNG info" box: parameters read from condiff's and AUTOMATIC1111's PNGs, in condiff's names.

Both programs store their parameters in a PNG text chunk named ``parameters``: condiff as a JSON
object (:func:`condiff.images.save_png`), A1111 as its "infotext" (the prompt, a ``Negative
prompt: …`` line, a ``Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512`` line).
Reading is the server's (:func:`condiff.server.encode.png_info`, the ``/sdapi/v1/png-info``
route); this module only renames A1111's keys to the options of the studio's tabs
(:func:`to_condiff_names`) so that the box can be sent back into a tab.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["read_parameters", "parse_parameters_text", "to_condiff_names", "A1111_SAMPLERS"]

#: A1111 sampler names → condiff samplers (those with an exact counterpart)
A1111_SAMPLERS = {
    "DDIM": "ddim", "DPM++ 2M": "dpmpp_2m", "DPM++ 2M Karras": "dpmpp_2m", "Euler": "euler",
    "Euler a": "euler_ancestral", "Heun": "heun", "DDPM": "ddpm",
}
#: A1111 infotext keys → (condiff option, converter)
_KEYS = {
    "prompt": ("prompt", str), "negative_prompt": ("negative", str), "Steps": ("steps", int),
    "CFG scale": ("guidance", float), "Seed": ("seed", int), "Denoising strength": ("strength", float),
    "Model": ("model", str),
}


def read_parameters(path: str | Path, max_pixels: int) -> dict[str, Any]:
    """The parameters of an image file in condiff's names (``{}`` when it carries none)."""
    from ..server.encode import png_info

    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    info = png_info(data, "image", max_pixels)
    params = info["parameters"]
    if not params:
        return {}
    if info["format"] == "condiff":
        return {**params, "format": "condiff"}
    return to_condiff_names(params)


def parse_parameters_text(text: str) -> dict[str, Any]:
    """Pasted parameters, condiff's JSON or A1111's infotext → condiff's names."""
    from ..server.encode import infotext_pairs

    text = (text or "").strip()
    if not text:
        raise InputError("the parameters box is empty; drop a PNG or paste its parameters")
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise InputError("the parameters start like JSON but do not parse; paste condiff's JSON whole") from None
        if not isinstance(data, dict):
            raise InputError("condiff's parameters must be a JSON object")
        return {**data, "format": "condiff"}
    return to_condiff_names(infotext_pairs(text))


def to_condiff_names(pairs: dict[str, Any]) -> dict[str, Any]:
    """A1111 infotext pairs → condiff's option names; keys without a counterpart stay under ``a1111``."""
    out: dict[str, Any] = {"format": "a1111"}
    extra: dict[str, Any] = {}
    for key, value in pairs.items():
        if key in _KEYS:
            name, conv = _KEYS[key]
            try:
                out[name] = conv(value)
            except (TypeError, ValueError):
                raise InputError(f"A1111 setting {key!r} has the value {value!r}, which is not a number") from None
        elif key == "Sampler":
            out["sampler"] = A1111_SAMPLERS.get(str(value), str(value))
        elif key == "Size" and "x" in str(value):
            w, _, h = str(value).partition("x")
            if w.strip().isdigit() and h.strip().isdigit():
                out["width"], out["height"] = int(w), int(h)
        else:
            extra[key] = value
    if extra:
        out["a1111"] = extra
    return out
