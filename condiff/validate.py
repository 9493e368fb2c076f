"""Validation at the edge: one function per kind of input, shared by the CLI, the Python API and the server.

Every check raises condiff's own types (:mod:`condiff.errors`) with a one-line message that names
the problem and the fix, *before* any model is loaded or memory is allocated:

==================  ==========================================================================
kind                functions
==================  ==========================================================================
numbers             :func:`check_int`, :func:`check_float`, :func:`check_steps`, :func:`check_count`,
                    :func:`check_radius`, :func:`check_fraction`
sizes               :func:`check_size` (output height × width against the pixel limit)
choices             :func:`check_choice`, :func:`check_sampler`, :func:`check_schedule`
prompts             :func:`check_prompt`, :func:`check_prompts` (type, length, decodability)
tensors             :func:`check_image_tensor`, :func:`check_mask_tensor` ([B, C, H, W], [0, 1];
                    a uint8 0–255 tensor is converted, a float tensor outside [0, 1] refused)
paths               :func:`check_output`, :func:`check_outputs` (exists, name length, writable
                    folder), :func:`check_input_file`
weight files        :func:`check_weight_file` (safetensors header parsed, ``.pt`` refused unless
                    asked), :func:`wrap_model_errors`
devices             :func:`check_device`, :func:`check_dtype`
==================  ==========================================================================

**Limits** (:class:`Limits`, read by :func:`limits`) bound what one call may ask for. Defaults are
generous for the built-in models and a GPU; raise one with an environment variable
(``CONDIFF_MAX_STEPS=5000``) or, on the command line, ``condiff --limit steps=5000 …``.
"""

from __future__ import annotations

import errno
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from torch import Tensor

from .errors import CondiffError, DeviceError, InputError, LimitError, ModelError, OutputError

__all__ = [
    "Limits", "limits", "set_limit", "check_int", "check_float", "check_steps", "check_count", "check_radius",
    "check_fraction", "check_size", "check_choice", "check_sampler", "check_schedule", "check_prompt",
    "check_prompts", "check_image_tensor", "check_mask_tensor", "check_output", "check_outputs",
    "check_input_file", "check_weight_file", "check_model_path", "OutputExistsError", "InputFileNotFound", "wrap_model_errors", "check_device", "check_dtype", "DTYPES",
]


# --------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limits:
    """Upper bounds of one call; each field ``f`` can be raised with ``CONDIFF_MAX_<F>`` (e.g. CONDIFF_MAX_STEPS)."""

    steps: int = 1000           #: sampling steps (a full DDPM chain of the built-in schedule)
    train_steps: int = 100_000  #: personalization / training steps
    batch: int = 64             #: images per call (--batch)
    n: int = 64                 #: variations per call (--n)
    pixels: int = 2048 * 2048   #: output height × width
    radius: float = 256.0       #: feather / blur radii in pixels
    prompt_chars: int = 2000    #: characters of one prompt


_OVERRIDES: dict[str, float] = {}


def limits() -> Limits:
    """The limits in force: defaults, then ``CONDIFF_MAX_*`` environment variables, then :func:`set_limit`."""
    values = {}
    for f in fields(Limits):
        raw = _OVERRIDES.get(f.name, os.environ.get(f"CONDIFF_MAX_{f.name.upper()}"))
        if raw is None:
            continue
        try:
            v = float(raw)
        except (TypeError, ValueError):
            raise InputError(f"limit {f.name}={raw!r} is not a number; give e.g. CONDIFF_MAX_{f.name.upper()}=5000")
        if not (math.isfinite(v) and v > 0):
            raise InputError(f"limit {f.name}={raw!r} must be a positive finite number")
        values[f.name] = v if f.type == "float" else int(v)
    return Limits(**values)


def set_limit(spec: str) -> None:
    """``NAME=VALUE`` (the CLI's ``--limit``): raise or lower one limit for this process."""
    name, sep, value = spec.partition("=")
    names = [f.name for f in fields(Limits)]
    if not sep or name not in names:
        raise InputError(f"--limit takes NAME=VALUE with NAME one of {', '.join(names)}; got {spec!r}")
    _OVERRIDES[name] = value
    limits()  # validate now


def _limit_hint(name: str) -> str:
    return f"raise it with --limit {name}=VALUE or CONDIFF_MAX_{name.upper()}"


# --------------------------------------------------------------------------- numbers
def check_int(name: str, value, lo: int | None = None, hi: int | None = None, *, limit: str | None = None) -> int:
    """An integer in [lo, hi] (``hi`` may come from the :class:`Limits` field ``limit``: LimitError)."""
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
            isinstance(value, float) and value.is_integer()):
        raise InputError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if lo is not None and value < lo:
        raise InputError(f"{name} must be an integer >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise InputError(f"{name} must be an integer <= {hi}, got {value}")
    if limit is not None:
        cap = getattr(limits(), limit)
        if value > cap:
            raise LimitError(f"{name}={value} is over the limit of {cap}; {_limit_hint(limit)}")
    return value


def check_float(name: str, value, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False) -> float:
    """A finite number in [lo, hi] (``(lo, hi]`` with ``lo_open``)."""
    if isinstance(value, bool):
        raise InputError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise InputError(f"{name} must be {'>' if lo_open else '≥'} {lo}, got {v:g}")
    if hi is not None and v > hi:
        raise InputError(f"{name} must be ≤ {hi}, got {v:g}")
    return v


def check_fraction(name: str, value) -> float:
    """A number in [0, 1]."""
    v = check_float(name, value)
    if not 0.0 <= v <= 1.0:
        raise InputError(f"{name} must lie in [0, 1], got {v:g}")
    return v


def check_steps(value, name: str = "steps", *, allow_none: bool = True, training: bool = False) -> int | None:
    """Sampling (or ``training``) steps: None (the default) or an integer in [1, limit]."""
    if value is None and allow_none:
        return None
    return check_int(name, value, 1, limit="train_steps" if training else "steps")


def check_count(value, name: str = "batch", *, limit: str = "batch") -> int:
    """A number of images (batch, --n): an integer in [1, limit]."""
    return check_int(name, value, 1, limit=limit)


def check_radius(name: str, value) -> float:
    """A feather / blur radius in pixels: finite, ≥ 0, ≤ the radius limit."""
    v = check_float(name, value, 0.0)
    cap = limits().radius
    if v > cap:
        raise LimitError(f"{name}={v:g} px is over the limit of {cap:g} px; {_limit_hint('radius')}")
    return v


def check_size(height, width, *, multiple: int = 1, name: str = "size") -> tuple[int, int]:
    """Output (height, width): positive integers, multiples of ``multiple``, at most the pixel limit."""
    h = check_int("height", height, 1)
    w = check_int("width", width, 1)
    if h % multiple or w % multiple:
        raise InputError(f"{name} {w}×{h} must be a multiple of {multiple} on each side; "
                         f"try {max(multiple, w // multiple * multiple)}×{max(multiple, h // multiple * multiple)}")
    cap = limits().pixels
    if h * w > cap:
        raise LimitError(f"{name} {w}×{h} = {h * w / 1e6:.1f} Mpx is over the limit of {cap / 1e6:.1f} Mpx; "
                         f"{_limit_hint('pixels')}")
    return h, w


# --------------------------------------------------------------------------- choices
def check_choice(name: str, value, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def check_sampler(name) -> str:
    from .samplers.registry import list_samplers

    return check_choice("sampler", name, list_samplers())


def check_schedule(name) -> str | None:
    from .samplers.registry import SCHEDULES

    return None if name is None else check_choice("schedule", name, SCHEDULES)


# --------------------------------------------------------------------------- prompts
def check_prompt(prompt, name: str = "prompt") -> str:
    """A prompt: a str of at most ``prompt_chars`` characters that encodes as UTF-8.

    An undecodable command-line argument reaches Python as lone surrogates (PEP 383); it is
    refused here instead of failing inside the tokenizer.
    """
    if not isinstance(prompt, str):
        raise InputError(f"{name} must be a string, got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{name} is not valid text (undecodable bytes); pass it as UTF-8") from None
    if "\x00" in prompt:
        raise InputError(f"{name} contains a NUL character; remove it")
    cap = limits().prompt_chars
    if len(prompt) > cap:
        raise LimitError(f"{name} has {len(prompt)} characters, over the limit of {cap}; "
                         f"shorten it or {_limit_hint('prompt_chars')}")
    return prompt


def check_prompts(prompt, name: str = "prompt") -> str | list[str]:
    """A prompt or a non-empty sequence of prompts (each checked by :func:`check_prompt`)."""
    if isinstance(prompt, str):
        return check_prompt(prompt, name)
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise InputError(f"{name} must be a string or a non-empty list of strings")
    check_count(len(prompt), f"number of {name}s")
    return [check_prompt(p, name) for p in prompt]


# --------------------------------------------------------------------------- tensors
def check_image_tensor(x, name: str = "image", *, channels: int | None = 3) -> Tensor:
    """Images [B, C, H, W] as float32 in [0, 1].

    uint8 tensors are read as 0–255 and divided by 255; float tensors must already lie in [0, 1]
    (a 0–255 float tensor is refused, not silently clamped to a flat picture); NaN/inf are refused.
    """
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch tensor [B, C, H, W] in [0, 1], got {type(x).__name__}; "
                         "load files with condiff.images.load_image")
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels) or x.numel() == 0:
        want = f"[B, {channels}, H, W]" if channels else "[B, C, H, W]"
        raise InputError(f"{name} must be a tensor {want}, got shape {tuple(x.shape)}")
    _check_pixels(name, x.shape[-2] * x.shape[-1])
    if x.dtype == torch.uint8:
        return x.float() / 255
    if not x.is_floating_point():
        raise InputError(f"{name} must be float in [0, 1] or uint8 in 0-255, got {x.dtype}")
    x = x.float()
    if not torch.isfinite(x).all():
        raise InputError(f"{name} holds NaN or inf values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        hint = " (it looks like 0-255: divide by 255)" if hi > 1.5 else ""
        raise InputError(f"{name} values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]{hint}")
    return x


def check_mask_tensor(mask, image: Tensor | None = None, name: str = "mask") -> Tensor:
    """A mask [B|1, 1, H, W] in [0, 1] (uint8 0–255 accepted), the size of ``image`` when given."""
    m = check_image_tensor(mask, name, channels=1)
    if image is not None:
        if m.shape[-2:] != image.shape[-2:]:
            raise InputError(f"{name} size {m.shape[-1]}×{m.shape[-2]} differs from image size "
                             f"{image.shape[-1]}×{image.shape[-2]}; draw the mask on this image")
        if m.shape[0] not in (1, image.shape[0]):
            raise InputError(f"{name} batch {m.shape[0]} must be 1 or the image batch {image.shape[0]}")
    return m


def _check_pixels(name: str, pixels: int) -> None:
    from .images import MAX_PIXELS

    cap = max(MAX_PIXELS, limits().pixels)
    if pixels > cap:
        raise LimitError(f"{name} has {pixels / 1e6:.1f} Mpx, over the limit of {cap / 1e6:.1f} Mpx; "
                         f"downscale it or {_limit_hint('pixels')}")


# --------------------------------------------------------------------------- paths
class OutputExistsError(OutputError, FileExistsError):
    """The output exists and overwriting was not asked for (also a FileExistsError)."""


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output(path, overwrite: bool = False, *, suffixes: Sequence[str] | None = (".png",),
                 name: str = "output") -> Path:
    """An output file that can be written, checked before any compute (creates nothing).

    Refuses: a wrong suffix, an existing file (unless ``overwrite``), a folder, a name longer than the
    file system allows, a path whose folder is a file or is not writable.
    """
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise InputError(f"{name} must be a file name, got {path!r}")
    path = Path(path).expanduser()
    if "\x00" in str(path):
        raise InputError(f"{name} {str(path)!r} contains a NUL character")
    try:
        str(path).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise InputError(f"{name} {str(path)!r} is not a valid file name") from None
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(f"{name} {path} must end in {' or '.join(suffixes)}")
    for part in path.parts:
        if len(os.fsencode(part)) > 255:
            raise OutputError(errno.ENAMETOOLONG, f"{name} name {part[:40]}… is too long ({len(os.fsencode(part))} bytes; "
                              "the file system allows 255); choose a shorter name")
    if path.is_dir():
        raise OutputError(errno.EISDIR, f"{name} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(errno.EEXIST, f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    anc = _existing_ancestor(path.parent if str(path.parent) else Path("."))
    if not anc.is_dir():
        raise OutputError(errno.ENOTDIR, f"cannot write {path}: {anc} is a file, not a folder")
    room = _name_max(anc) - 22  # the atomic writer's temporary ".NAME.PID-XXXXXXXX.tmp" adds up to 22 bytes
    if len(os.fsencode(path.name)) > room:
        raise OutputError(errno.ENAMETOOLONG, f"{name} name {path.name[:40]}… is too long for the file system "
                          f"(at most {room} bytes here); choose a shorter name")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(errno.EACCES, f"cannot write {path}: the folder {anc} is not writable; "
                          "choose another --out")
    return path


def check_outputs(paths: Iterable, overwrite: bool = False, **kw) -> list[Path]:
    """:func:`check_output` for each path (all refused before anything is written)."""
    return [check_output(p, overwrite, **kw) for p in paths]


class InputFileNotFound(InputError, FileNotFoundError):
    """An input file that does not exist (also a FileNotFoundError)."""


def check_input_file(path, name: str = "input") -> Path:
    """An existing, readable regular file."""
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise InputError(f"{name} must be a file name, got {path!r}")
    path = Path(path).expanduser()
    if not path.exists():
        raise InputFileNotFound(errno.ENOENT, f"{name} file {path} does not exist")
    if not path.is_file():
        raise InputError(f"{name} {path} is not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{name} file {path} is not readable")
    return path


def check_model_path(name) -> Path:
    """A model path given by name: a non-empty string whose parts fit the file system."""
    text = os.fspath(name) if isinstance(name, os.PathLike) else name
    if not isinstance(text, str) or not text.strip() or "\x00" in text:
        raise InputError(f"model must be a built-in name or a path, got {name!r}")
    path = Path(text).expanduser()
    if any(len(os.fsencode(p)) > 255 for p in path.parts):
        raise InputError(f"model path {text[:40]}… has a part longer than 255 bytes; no such file can exist")
    return path


# --------------------------------------------------------------------------- weight files
def check_weight_file(path, name: str = "weight file", *, allow_pickle: bool = True) -> Path:
    """A LoRA / embedding / checkpoint file: exists, and a ``.safetensors`` file has a parseable header.

    ``.pt``/``.bin``/``.ckpt`` files are accepted when ``allow_pickle`` (they are read with
    ``torch.load(weights_only=True)`` by the loaders, never unpickled freely).
    """
    path = check_input_file(path, name)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as err:  # noqa: BLE001 - safetensors raises several private types
            raise ModelError(f"{name} {path} is not a valid safetensors file ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:120] if str(err) else 'corrupt header'}); "
                             "re-export or re-download it") from None
    elif suffix in (".pt", ".bin", ".ckpt", ".pth"):
        if not allow_pickle:
            raise ModelError(f"{name} {path} is a pickle file; give a .safetensors file")
    else:
        raise ModelError(f"{name} {path} has an unknown format {suffix or '(no suffix)'}; "
                         "give a .safetensors (or .pt/.bin) file")
    return path


@contextmanager
def wrap_model_errors(path, name: str = "weight file") -> Iterator[None]:
    """Turn the raw errors of reading a weight file (KeyError, RuntimeError, pickle errors…) into ModelError."""
    try:
        yield
    except CondiffError:
        raise
    except (KeyError, IndexError, ValueError, RuntimeError, OSError, EOFError, AttributeError, TypeError) as err:
        raise ModelError(f"{name} {path} cannot be used: {type(err).__name__}: "
                         f"{(str(err).splitlines() or [''])[0][:160]}") from err


# --------------------------------------------------------------------------- devices
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def check_device(device) -> torch.device:
    """A device that exists here: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (DeviceError otherwise)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise DeviceError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    else:
        raise DeviceError(f"device must be a string such as 'cpu' or 'cuda', got {type(device).__name__}")
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device cuda was asked for but no CUDA device is available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {dev} does not exist: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s) (cuda:0…cuda:{torch.cuda.device_count() - 1})")
        return dev
    if dev.type == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return dev
    raise DeviceError(f"device {str(device)!r} is not available here; use cpu or cuda")


def check_dtype(dtype, device: torch.device) -> torch.dtype:
    """``fp32``/``fp16``/``bf16``/``auto`` (or a torch dtype) for ``device``.

    On the CPU, bf16 works (slower than fp32 on most CPUs; useful to check half-precision paths)
    and fp16 is refused with a DeviceError (several CPU kernels have no fp16 path).
    """
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        dt = dtype
    elif isinstance(dtype, str) and dtype in DTYPES:
        dt = DTYPES[dtype]
    else:
        raise InputError(f"unknown dtype {dtype!r}; choose fp32, fp16, bf16 or auto")
    if dt not in DTYPES.values():
        raise InputError(f"unsupported dtype {dt}; choose fp32, fp16 or bf16")
    if device.type == "cpu" and dt == torch.float16:
        raise DeviceError("--dtype fp16 runs on a GPU only; on the CPU use --dtype bf16 or fp32 (or auto)")
    return dt
