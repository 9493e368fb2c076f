"""Contact sheet of a built world: sample records with their six conditions and captions (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..io import atomic_path
from .conditions import CONDITIONS, condition_maps
from .shards import read_json, read_npz

__all__ = ["contact_sheet", "write_contact_sheet"]


def _pick(index: list[list[dict]], n: int) -> list[tuple[int, int]]:
    """Deterministic spread over styles: round-robin over styles in shard order, figures included."""
    by_style: dict[str, list[tuple[int, int]]] = {}
    for s, idx in enumerate(index):
        for i, r in enumerate(idx):
            by_style.setdefault(r["style"], []).append((s, i))
    styles = sorted(by_style)
    out, k = [], 0
    while len(out) < n and any(k < len(v) for v in by_style.values()):
        for st in styles:
            if k < len(by_style[st]) and len(out) < n:
                out.append(by_style[st][k])
        k += 1
    return out


def contact_sheet(world: str | Path, n: int = 8) -> Image.Image:
    """A grid: one row per sampled record — picture, canny, lineart, softedge, depth, normal, pose,
    region map — with the record's first caption and style under it."""
    world = Path(world)
    manifest = read_json(world / "manifest.json")
    index = [read_json(world / sh["index"]) for sh in manifest["shards"]]
    picks = _pick(index, n)
    size = manifest["size"]
    cols = ("image", *CONDITIONS, "regions")
    head, text_h = 18, 16
    font = ImageFont.load_default()
    sheet = Image.new("RGB", (len(cols) * size, head + len(picks) * (size + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(cols):
        draw.text((c * size + 4, 3), name, fill="black", font=font)
    shards: dict[int, dict] = {}
    for r, (s, i) in enumerate(picks):
        if s not in shards:
            shards[s] = read_npz(world / manifest["shards"][s]["file"])
        rec = {k: v[i] for k, v in shards[s].items()}
        conds = condition_maps(rec)
        regions = rec["regions"].astype(np.int32)
        palette = np.array([[255, 255, 255]] + [[(37 * k) % 256, (91 * k) % 256, (157 * k) % 256] for k in range(1, 256)], np.uint8)
        tiles = [rec["image"], *[conds[k] for k in CONDITIONS], palette[regions]]
        y = head + r * (size + text_h)
        for c, tile in enumerate(tiles):
            sheet.paste(Image.fromarray(tile), (c * size, y))
        meta = index[s][i]
        draw.text((4, y + size + 2), f"[{meta['style']}] {meta['captions'][0]}", fill="black", font=font)
    return sheet


def write_contact_sheet(world: str | Path, out: str | Path, n: int = 8) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        contact_sheet(world, n).save(tmp, format="PNG", optimize=True)
    return out
