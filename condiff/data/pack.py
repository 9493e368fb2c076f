"""The source pack: a compact, checksummed bundle of every vector source the world is rendered from.

A GPU machine without network receives the pack (a few MiB) instead of rendered shards, and
renders the world there (``condiff data build --from-pack PACK``). The pack is one xz-compressed
JSON document::

    {"format": "condiff-world-pack", "pack_version": 1, "dataset_version": "1",
     "sets": [{<licence/attribution facts>, "icons": [[name, category, body, w, h, left, top], ...]}],
     "payload_sha256": sha256 of the canonical JSON of "sets"}

``read_pack`` recomputes the payload hash (and the file hash against ``PACK.sha256`` when that
sidecar exists), so a truncated or altered pack is refused. The held-out personalisation concept
is removed before anything is packed.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path

from ..io import atomic_path
from .heldout import is_held_out
from .shards import sha256_file
from .sources import Icon, IconSet

__all__ = ["PACK_FORMAT", "write_pack", "read_pack"]

PACK_FORMAT = "condiff-world-pack"
PACK_VERSION = 1


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _sets_payload(sets: list[IconSet]) -> list[dict]:
    out = []
    for s in sorted(sets, key=lambda s: s.prefix):
        icons = [[i.name, i.category, i.body, i.width, i.height, i.left, i.top]
                 for i in sorted(s.icons, key=lambda i: i.name) if not is_held_out(i.name)]
        out.append({**s.meta(), "icons": icons})
    return out


def write_pack(sets: list[IconSet], path: str | Path, dataset_version: str = "1", preset: int = 9) -> dict:
    """Write the pack (and ``PACK.sha256``); returns a summary (path, bytes, sha256, icons per set)."""
    payload = _sets_payload(sets)
    doc = {"format": PACK_FORMAT, "pack_version": PACK_VERSION, "dataset_version": str(dataset_version),
           "sets": payload, "payload_sha256": hashlib.sha256(_canonical(payload)).hexdigest()}
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(lzma.compress(_canonical(doc), preset=preset))
    digest = sha256_file(path)
    with atomic_path(path.with_name(path.name + ".sha256")) as tmp:
        tmp.write_text(f"{digest}  {path.name}\n")
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest,
            "icons": {s["prefix"]: len(s["icons"]) for s in payload}}


def read_pack(path: str | Path) -> tuple[str, list[IconSet]]:
    """Verify and read a pack; returns ``(dataset_version, sets)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pack {path} not found; create one with `condiff data pack --out {path}`")
    side = path.with_name(path.name + ".sha256")
    if side.is_file():
        want = side.read_text().split()[0]
        got = sha256_file(path)
        if want != got:
            raise ValueError(f"pack {path} is corrupt: sha256 {got} does not match {side.name} ({want}); copy it again")
    try:
        doc = json.loads(lzma.decompress(path.read_bytes()))
    except (lzma.LZMAError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a condiff source pack ({err}); create one with `condiff data pack`") from err
    if doc.get("format") != PACK_FORMAT:
        raise ValueError(f"{path} is not a condiff source pack (format {doc.get('format')!r})")
    if hashlib.sha256(_canonical(doc["sets"])).hexdigest() != doc["payload_sha256"]:
        raise ValueError(f"pack {path} failed its payload checksum; copy or rebuild it")
    sets = []
    for s in doc["sets"]:
        icons = [Icon(name=n, category=c, body=b, width=w, height=h, left=l, top=t) for n, c, b, w, h, l, t in s["icons"]]
        meta = {k: v for k, v in s.items() if k != "icons"}
        sets.append(IconSet(**meta, icons=icons))
    return str(doc["dataset_version"]), sets
