"""AUTOMATIC1111's "infotext": the ``parameters`` text other Stable Diffusion tools read.

The format (``modules/infotext_utils.py`` and ``processing.create_infotext`` of
stable-diffusion-webui), as written by :func:`format_infotext` and read by :func:`parse_infotext`::

    <prompt, any number of lines>
    Negative prompt: <negative prompt, any number of lines>
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 128x128, …

* The last line holds ``Key: value`` pairs separated by ``, ``; it counts as the field line only
  when it has at least three pairs (otherwise it is part of a prompt).
* A value containing ``,``, ``:`` or a newline is written as a JSON string (A1111's ``quote``);
  a value starting and ending with ``"`` is read back with ``json.loads``.
* ``Size: WxH`` is width × height. ``Model hash`` is A1111's short hash: the first 10 hex digits of
  the sha256 of the checkpoint file (Civitai calls it "AutoV2"); ``Lora hashes`` lists
  ``name: hash`` with the first 12 hex digits of each LoRA file's sha256.
* ``ControlNet N`` is a quoted list of ``Key: value`` pairs (the sd-webui-controlnet extension's form).
* Prompt lines are stripped of surrounding spaces on reading (as A1111 does), so a prompt with
  leading/trailing spaces on a line reads back trimmed; condiff's own JSON chunk keeps it exact.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = [
    "SAMPLER_TO_A1111", "SCHEDULE_TO_A1111", "format_infotext", "parse_infotext", "infotext_fields",
    "recipe_from_fields", "quote", "unquote",
]

SAMPLER_TO_A1111 = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "dpmpp_2m": "DPM++ 2M",
    "ddim": "DDIM",
    "ddpm": "DDPM",
}
SCHEDULE_TO_A1111 = {"karras": "Karras", "exponential": "Exponential"}
_A1111_TO_SAMPLER = {v.lower(): k for k, v in SAMPLER_TO_A1111.items()}
_A1111_TO_SCHEDULE = {v.lower(): k for k, v in SCHEDULE_TO_A1111.items()}

# one "Key: value" pair of the field line: a key of words, a quoted JSON string or text up to the next comma
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE = "Negative prompt:"


def quote(value: Any) -> str:
    """A field value as A1111 writes it: JSON-quoted when it holds ``,``, ``:`` or a newline (and,
    so that it reads back unambiguously, a ``"``)."""
    text = str(value)
    if not any(c in text for c in ',:\n"'):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def _number(v: Any) -> str:
    """Numbers as A1111 prints them: 7.0 → "7", 7.5 → "7.5"."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def infotext_fields(params: dict[str, Any], *, size: tuple[int, int] | None = None,
                    model_hash: str | None = None, lora_hashes: dict[str, str] | None = None,
                    version: str | None = None) -> dict[str, str]:
    """The A1111 field line of condiff parameters, in A1111's order (values not yet quoted)."""
    f: dict[str, str] = {}
    if params.get("steps") is not None:
        f["Steps"] = _number(params["steps"])
    if params.get("sampler"):
        f["Sampler"] = SAMPLER_TO_A1111.get(params["sampler"], params["sampler"])
    schedule = SCHEDULE_TO_A1111.get(str(params.get("schedule", "")))
    if schedule:
        f["Schedule type"] = schedule
    if params.get("guidance") is not None:
        f["CFG scale"] = _number(params["guidance"])
    if params.get("seed") is not None:
        f["Seed"] = _number(params["seed"])
    if size is not None:
        f["Size"] = f"{size[0]}x{size[1]}"
    if model_hash:
        f["Model hash"] = model_hash
    if params.get("model"):
        f["Model"] = _model_name(str(params["model"]))
    strength = params.get("strength", params.get("noise_level"))
    if strength is not None:
        f["Denoising strength"] = _number(strength)
    for i, unit in enumerate(params.get("control") or []):
        f[f"ControlNet {i}"] = ", ".join(
            f"{k}: {v}" for k, v in (("Module", unit.get("type")), ("Model", f"controlnet-{unit.get('type')}"),
                                     ("Weight", _number(unit.get("scale", 1.0))),
                                     ("Guidance Start", _number(unit.get("start", 0.0))),
                                     ("Guidance End", _number(unit.get("end", 1.0)))))
    if lora_hashes:
        # names lose ":" and "," (as A1111 writes them) so that the pairs read back
        f["Lora hashes"] = ", ".join(f"{name.replace(':', '').replace(',', '')}: {h}" for name, h in lora_hashes.items())
    if version:
        f["Version"] = version
    return f


def _model_name(model: str) -> str:
    """A1111's ``Model`` field: the checkpoint's file name without folder and extension."""
    name = model.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    for ext in (".safetensors", ".ckpt", ".pt", ".bin"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def format_infotext(params: dict[str, Any], **kw) -> str:
    """condiff parameters as A1111's ``parameters`` text (keyword arguments: :func:`infotext_fields`)."""
    prompt = params.get("prompt") or ""
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt else ""
    lines = [str(prompt)]
    negative = params.get("negative") or ""
    if isinstance(negative, list):
        negative = negative[0] if negative else ""
    if negative:
        lines.append(f"{_NEGATIVE} {negative}")
    fields = infotext_fields(params, **kw)
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in fields.items()))
    return "\n".join(lines)


def parse_infotext(text: str) -> dict[str, str]:
    """A1111 ``parameters`` text → ``{"Prompt", "Negative prompt", field: value…}`` (values as strings)."""
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE):
            in_negative = True
            line = line[len(_NEGATIVE):].strip()
        (negative if in_negative else prompt).append(line)
    out = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PAIR.findall(last):
        out[key.strip()] = unquote(value.strip())
    return out


def _pairs(text: str) -> dict[str, str]:
    """``"name: v, name2: v2"`` → ``{name: v, …}`` (Lora hashes, a ControlNet unit)."""
    out = {}
    for part in text.split(","):
        k, sep, v = part.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


def _to_number(text: str) -> int | float:
    v = float(text)
    return int(v) if v.is_integer() and "." not in text and "e" not in text.lower() else v


def recipe_from_fields(fields: dict[str, str]) -> dict[str, Any]:
    """Parsed A1111 fields → condiff parameter names (prompt, negative, steps, sampler, guidance,
    seed, width, height, model, model_hash, strength, schedule, loras, control); unknown fields are
    kept under ``a1111`` as text."""
    p: dict[str, Any] = {"prompt": fields.get("Prompt", ""), "negative": fields.get("Negative prompt", "")}
    rest = {k: v for k, v in fields.items() if k not in ("Prompt", "Negative prompt")}
    conv = {"Steps": ("steps", int), "CFG scale": ("guidance", float), "Seed": ("seed", int),
            "Denoising strength": ("strength", float), "Model hash": ("model_hash", str), "Model": ("model", str)}
    for key, (name, cast) in conv.items():
        if key in rest:
            try:
                p[name] = cast(_to_number(rest[key]) if cast is not str else rest[key])
                del rest[key]
            except ValueError:  # another tool's odd value: kept as text under "a1111"
                pass
    if "Size" in rest:
        m = _SIZE.match(rest.pop("Size"))
        if m:
            p["width"], p["height"] = int(m.group(1)), int(m.group(2))
    if "Sampler" in rest:
        name = rest.pop("Sampler")
        if name.endswith(" Karras") and "Schedule type" not in rest:  # A1111 < 1.9: "DPM++ 2M Karras"
            name, rest["Schedule type"] = name[: -len(" Karras")], "Karras"
        p["sampler"] = _A1111_TO_SAMPLER.get(name.lower(), name)
    if "Schedule type" in rest:
        st = rest.pop("Schedule type")
        p["schedule"] = _A1111_TO_SCHEDULE.get(st.lower(), st)
    if "Lora hashes" in rest:
        p["loras"] = [{"name": k, "hash": v} for k, v in _pairs(rest.pop("Lora hashes")).items()]
    units = sorted((k for k in rest if re.fullmatch(r"ControlNet \d+", k)), key=lambda k: int(k.split()[1]))
    if units:
        p["control"] = []
        for k in units:
            u = _pairs(rest.pop(k))
            p["control"].append({"type": u.get("Module"), "scale": float(u.get("Weight", 1)),
                                 "start": float(u.get("Guidance Start", 0)), "end": float(u.get("Guidance End", 1))})
    if rest:
        p["a1111"] = rest
    return p
