"""Deterministic, checksummed shard files: ``.npz`` archives of uint8/float32 arrays, no pickle.

``numpy.savez_compressed`` stamps each member with the current time, so two identical builds
would differ byte-wise; :func:`write_npz` writes the same standard ``.npz`` layout (one ``.npy``
member per array, deflate-compressed) with fixed timestamps and permissions, so the same arrays
always give the same bytes. Readers use ``np.load(allow_pickle=False)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from ..io import atomic_path, sha256_file

__all__ = ["write_npz", "read_npz", "sha256_file", "write_json", "read_json"]

_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(path: str | Path, arrays: dict[str, np.ndarray], level: int = 6) -> str:
    """Write ``arrays`` (sorted by name) as a deterministic compressed ``.npz``; returns its sha256."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
            for name in sorted(arrays):
                arr = np.ascontiguousarray(arrays[name])
                if arr.dtype == object:
                    raise ValueError(f"array {name!r} has dtype object; shards hold numeric arrays only")
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr, allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=level)
    return sha256_file(path)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` (never unpickles)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write_json(path: str | Path, doc) -> str:
    """Canonical JSON (sorted keys, 1-space indent, UTF-8, trailing newline), atomically; returns sha256."""
    data = (json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def read_json(path: str | Path):
    return json.loads(Path(path).read_text("utf-8"))
