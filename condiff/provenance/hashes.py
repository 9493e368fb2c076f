"""Weight-file hashes in the conventions other tools print.

* **Model hash** (A1111 ≥ 1.0, Civitai "AutoV2"): the first 10 hex digits of the sha256 of the
  checkpoint file. A model stored as several files (condiff's built-in model, a diffusers folder)
  has no A1111 hash; condiff then hashes the concatenation of its weight files in sorted order
  (the built-in U-Net's shards; a folder's ``*.safetensors``), which is stable for the same files.
* **LoRA hash** (A1111's ``Lora hashes`` field): the first 12 hex digits of the file's sha256.

Hashes are cached by (path, size, mtime): in memory, and on disk in
``$XDG_CACHE_HOME/condiff/hashes.json`` (as A1111 keeps its ``cache.json``), so a multi-gigabyte
checkpoint is read once, not on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["file_sha256", "model_files", "model_hash", "lora_hash", "lora_hashes"]

_CACHE: dict[tuple, str] = {}
_WEIGHT_EXT = (".safetensors", ".ckpt", ".pt", ".bin", ".pth")


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "condiff" / "hashes.json"


def _disk_cache() -> dict[str, str]:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _remember(key: str, digest: str) -> None:
    """Add one entry to the on-disk cache (best effort: a read-only home just means no cache)."""
    from ..io import atomic_path

    cache = _disk_cache()
    cache[key] = digest
    try:
        with atomic_path(_cache_file()) as tmp:
            tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
    except OSError:
        pass


def _sha256_of(paths: list[Path]) -> str:
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    if key not in _CACHE:
        text_key = json.dumps(key)
        digest = _disk_cache().get(text_key)
        if digest is None:
            h = hashlib.sha256()
            for p in paths:
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            digest = h.hexdigest()
            _remember(text_key, digest)
        _CACHE[key] = digest
    return _CACHE[key]


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of one file (cached)."""
    return _sha256_of([Path(path)])


def model_files(model: str) -> list[Path]:
    """The weight files a model name or path stands for ([] when none are found)."""
    from ..models.registry import BUILTIN_MODELS, component_dir

    if model in BUILTIN_MODELS:
        folder = component_dir("ldm")
        return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    path = Path(model).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in _WEIGHT_EXT and p.is_file())
    return []


def model_hash(model: str | None) -> str | None:
    """A1111's 10-digit model hash of a model name or path (None when its files are not found)."""
    files = model_files(model) if model else []
    return _sha256_of(files)[:10] if files else None


def lora_hash(path: str | os.PathLike) -> str:
    """A1111's 12-digit LoRA hash."""
    return file_sha256(path)[:12]


def lora_hashes(loras: list[dict] | None) -> dict[str, str]:
    """``{file stem: 12-digit hash}`` of the ``loras`` record of condiff parameters (missing files skipped)."""
    out = {}
    for entry in loras or []:
        path = Path(str(entry.get("file", "")))
        if path.is_file():
            out[path.stem] = lora_hash(path)
        elif entry.get("name") and entry.get("hash"):
            out[str(entry["name"])] = str(entry["hash"])
    return out
