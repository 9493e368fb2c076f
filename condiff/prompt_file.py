"""Prompt files: many text-to-image jobs from one file, each image with a seed fixed by its index.

A prompt file holds one job per line, either plain text (the prompt) or a JSON object::

    a cat face, twemoji style
    {"prompt": "a red heart, flat style", "seed": 7, "n": 4, "guidance": 7.5, "steps": 30}

Blank lines and lines starting with ``#`` are skipped. A JSON line may set ``prompt`` (required),
``negative``, ``seed``, ``n`` (images of this line), ``guidance``, ``steps``, ``sampler``,
``width`` and ``height``; any other key is refused with its line number, so a typo does not pass
silently. Options missing from a line take the command's values.

Each line expands into ``n`` :class:`ImageJob` s numbered in file order: image ``k`` of the whole
file is written as ``{k:05d}.png`` and, unless its line names a seed, uses seed ``base_seed + k``
(a line's own seed ``s`` gives its images ``s, s+1, …``). So an image's seed and name depend only
on the file, never on how the work is split across processes or batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import InputError, LimitError

__all__ = ["ImageJob", "read_prompt_file", "parse_prompt_lines", "MAX_JOBS", "MAX_LINE_CHARS"]

MAX_JOBS = 100_000          # images one file may ask for
MAX_LINE_CHARS = 10_000     # characters of one line
MAX_FILE_BYTES = 16 << 20   # size of the file itself

_OPTION_TYPES: dict[str, type] = {
    "negative": str, "guidance": float, "steps": int, "sampler": str, "width": int, "height": int,
}
_LINE_KEYS = {"prompt", "seed", "n", *_OPTION_TYPES}


@dataclass(frozen=True)
class ImageJob:
    """One image of a prompt file: its global index, prompt, seed and sampling options."""

    index: int
    prompt: str
    seed: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return f"{self.index:05d}.png"

    def batch_key(self) -> tuple:
        """Jobs with equal keys may share one network batch (same options, any prompt and seed)."""
        return tuple(sorted(self.options.items()))


def _typed(key: str, value: Any, where: str) -> Any:
    kind = _OPTION_TYPES[key]
    if kind is str:
        if not isinstance(value, str):
            raise InputError(f"{where}: {key!r} must be a string, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: {key!r} must be a number, got {value!r}")
    if kind is int and float(value) != int(value):
        raise InputError(f"{where}: {key!r} must be a whole number, got {value!r}")
    return kind(value)


def _parse_line(text: str, where: str) -> dict[str, Any]:
    if len(text) > MAX_LINE_CHARS:
        raise LimitError(f"{where}: line of {len(text)} characters (limit {MAX_LINE_CHARS}); shorten it")
    if not text.startswith("{"):
        return {"prompt": text}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err.msg} at column {err.colno}); "
                         "write a plain prompt or one JSON object per line") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: a JSON line must be an object such as {{\"prompt\": \"…\"}}")
    unknown = sorted(set(obj) - _LINE_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_LINE_KEYS)}")
    if not isinstance(obj.get("prompt"), str):
        raise InputError(f"{where}: the JSON object needs a \"prompt\" string")
    return obj


def parse_prompt_lines(lines: list[str], *, base_seed: int = 0, n: int = 1, source: str = "prompts",
                       max_jobs: int = MAX_JOBS) -> list[ImageJob]:
    """Expand prompt-file lines into image jobs (see the module docstring for the rules)."""
    if n < 1:
        raise InputError(f"images per prompt must be ≥ 1, got {n}")
    jobs: list[ImageJob] = []
    for lineno, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{source}:{lineno}"
        line = _parse_line(text, where)
        count = line.get("n", n)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InputError(f"{where}: 'n' must be a whole number ≥ 1, got {count!r}")
        if len(jobs) + count > max_jobs:
            raise LimitError(f"{source}: more than {max_jobs} images asked for; split the file")
        options = {k: _typed(k, v, where) for k, v in line.items() if k in _OPTION_TYPES}
        own_seed = line.get("seed")
        if own_seed is not None and (isinstance(own_seed, bool) or not isinstance(own_seed, int)):
            raise InputError(f"{where}: 'seed' must be a whole number, got {own_seed!r}")
        for j in range(count):
            k = len(jobs)
            seed = own_seed + j if own_seed is not None else base_seed + k
            jobs.append(ImageJob(k, line["prompt"], int(seed), options))
    if not jobs:
        raise InputError(f"{source}: no prompts (every line is blank or a # comment)")
    return jobs


def read_prompt_file(path: str | Path, *, base_seed: int = 0, n: int = 1,
                     defaults: dict[str, Any] | None = None) -> list[ImageJob]:
    """Read a prompt file (UTF-8) into image jobs; ``defaults`` fill options a line leaves out."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompt file {path} does not exist or is not a file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise LimitError(f"prompt file {path} is over {MAX_FILE_BYTES >> 20} MiB; split it")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"prompt file {path} is not UTF-8 text; save it as UTF-8") from None
    jobs = parse_prompt_lines(lines, base_seed=base_seed, n=n, source=str(path))
    fill = {k: v for k, v in (defaults or {}).items() if v is not None}
    return [replace(j, options={**fill, **j.options}) for j in jobs] if fill else jobs
