"""Builder of the built-in world: sources → rendered records → versioned, checksummed shards.

Every record is one SVG (an emoji of one vendor, or a procedural figure) rendered at ``size`` px
and composited on white, with the maps that can only be made from the vector source:

* ``image``   H×W×3 uint8 — the picture;
* ``lineart`` H×W uint8   — exact vector line art (white lines on black, :func:`svg_doc.lineart_svg`);
* ``depth``   H×W uint8   — 2.5-D inflation of the layer groups in drawing order (bright = near);
* ``regions`` H×W uint8   — top-most visible layer group per pixel (0 = background): object and
  region masks for inpainting;
* ``keypoints`` 18×3 float32 and ``has_pose`` — exact OpenPose keypoints of figures (zeros/0 else).

Canny, soft edge, normals and the pose picture are computed from these by the loader
(:mod:`condiff.data.conditions`), exactly and deterministically, which keeps shards small.

Determinism: records are ordered by (style, name), permuted with the seed, captions drawn from a
generator seeded by (seed, record id); rendering is a pure function of the SVG; shards are written
with :func:`shards.write_npz`. The same version, seed, sources and backend give byte-identical
shards and ``manifest.json``; timings go to ``build_info.json``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import re
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..preprocess.depth import height_to_depth8, inflate_layers
from .captions import figure_captions, icon_captions
from .figures import sample_figure
from .heldout import HELD_OUT, is_held_out, near_duplicate_check, pixel_hash, thumbnail
from .shards import write_json, write_npz
from .sources import IconSet
from .svg_doc import IconGeometry, layer_svgs, lineart_svg, picture_svg
from .svg_render import composite_on_white, get_backend

__all__ = ["WORLD_FORMAT", "VERSIONS", "build_world", "record_specs", "render_record", "is_flippable"]

WORLD_FORMAT = "condiff-world"
#: Per data-set version: figures in a full build, records per shard, layer groups, line width (px at 128).
VERSIONS = {"1": {"figures": 2000, "small_figures": 16, "shard_size": 1000, "max_layers": 8, "line_px": 1.0, "margin": 0.04}}

_NO_FLIP = re.compile(r"(left|right|arrow|letter|digit|keycap|clock|sign|button|flag|text|abc|symbol|\d|"
                      r"input|numbers|newspaper|scroll|memo|page-|ledger|notebook|calendar|ticket)")


def is_flippable(name: str, category: str) -> bool:
    """May the picture be mirrored without changing its meaning? Not for symbols, flags, arrows,
    letters, digits, clocks, signs or anything showing writing (a mirrored glyph is a different
    glyph, a mirrored "left arrow" is a right arrow)."""
    if category in ("Symbols", "Flags", "Extras"):
        return False
    return _NO_FLIP.search(name) is None


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8"))])


def record_specs(sets: list[IconSet], *, seed: int, size: int, n_figures: int, version: str = "1",
                 exclude: frozenset[tuple[str, str]] = frozenset()) -> list[dict]:
    """Everything needed to render each record (SVG, captions, facts), in the seeded shard order."""
    cfg = VERSIONS[version]
    specs = []
    for s in sets:
        for icon in s.icons:
            if is_held_out(icon.name) or (s.style, icon.name) in exclude:
                continue
            rid = f"{s.style}/{icon.name}"
            svg = picture_svg(icon.body, IconGeometry(icon.width, icon.height, icon.left, icon.top), size, cfg["margin"])
            specs.append({"id": rid, "kind": "icon", "style": s.style, "concept": icon.name, "category": icon.category,
                          "source": f"{s.package}#{icon.name}", "license": s.license_spdx, "svg": svg,
                          "captions": icon_captions(icon.name, icon.category, s.style, _rng(seed, rid)),
                          "flippable": is_flippable(icon.name, icon.category), "keypoints": None})
    frng = np.random.default_rng([int(seed), 7])
    for i in range(n_figures):
        fig = sample_figure(frng, size)
        rid = f"{fig.style}/person-{i:05d}"
        specs.append({"id": rid, "kind": "figure", "style": fig.style, "concept": "person " + fig.family,
                      "category": "Figures", "source": "procedural", "license": "Apache-2.0", "svg": fig.svg,
                      "captions": figure_captions(fig.facts, fig.style, _rng(seed, rid)), "flippable": True,
                      "keypoints": fig.keypoints.tolist()})
    specs.sort(key=lambda r: r["id"])
    order = np.random.default_rng([int(seed), 11]).permutation(len(specs))
    return [specs[i] for i in order]


def render_record(spec: dict, size: int, backend: str = "auto", version: str = "1") -> dict:
    """Render one record's arrays (see the module docstring) plus its near-duplicate fingerprints."""
    cfg = VERSIONS[version]
    be = get_backend(backend)
    svg = spec["svg"]
    image = composite_on_white(be.render(svg))
    if image.shape[:2] != (size, size):
        raise ValueError(f"record {spec['id']} rendered at {image.shape[:2]}, expected {size}×{size}")
    ink = composite_on_white(be.render(lineart_svg(svg, cfg["line_px"] * size / 128, size)))
    lineart = (255 - ink.min(axis=2)).astype(np.uint8)
    masks = [be.render(s)[..., 3] >= 128 for s in layer_svgs(svg, cfg["max_layers"])]
    masks = [m for m in masks if m.any()] or [np.zeros((size, size), bool)]
    regions = np.zeros((size, size), np.uint8)
    for k, m in enumerate(masks):
        regions[m] = k + 1
    depth = height_to_depth8(inflate_layers(masks))
    kp = np.zeros((18, 3), np.float32) if spec["keypoints"] is None else np.asarray(spec["keypoints"], np.float32)
    return {"image": image, "lineart": lineart, "depth": depth, "regions": regions, "keypoints": kp,
            "has_pose": np.uint8(spec["keypoints"] is not None), "thumb": thumbnail(image), "hash": pixel_hash(image)}


_WORKER: dict = {}


def _init_worker(size: int, backend: str, version: str) -> None:
    import cv2

    cv2.setNumThreads(1)  # one record per process; no thread pools inherited across fork
    _WORKER.update(size=size, backend=backend, version=version)


def _work(spec: dict) -> dict:
    return render_record(spec, _WORKER["size"], _WORKER["backend"], _WORKER["version"])


_META_KEYS = ("id", "kind", "style", "concept", "category", "source", "license", "captions", "flippable")
_ARRAYS = ("image", "lineart", "depth", "regions", "keypoints", "has_pose")


def build_world(out_dir: str | Path, sets: list[IconSet], *, version: str = "1", seed: int = 0, size: int = 128,
                small: bool = False, n_figures: int | None = None, workers: int | None = None, backend: str = "auto",
                exclude: frozenset[tuple[str, str]] = frozenset(), held_out_images: list[np.ndarray] | None = None,
                limit: int | None = None, progress=None) -> dict:
    """Render ``sets`` (+ procedural figures) into ``out_dir``: shards, indexes, ``manifest.json``.

    Returns the manifest. ``workers`` defaults to the CPU count; ``limit`` keeps the first records
    (after the seeded shuffle) for quick trials.
    """
    if str(version) not in VERSIONS:
        raise ValueError(f"unknown data-set version {version!r}; known: {list(VERSIONS)}")
    if size < 32 or size % 8:
        raise ValueError(f"size must be a multiple of 8 and at least 32, got {size}")
    version = str(version)
    cfg = VERSIONS[version]
    be = get_backend(backend)  # fail early with a clear message
    n_fig = n_figures if n_figures is not None else (cfg["small_figures"] if small else cfg["figures"])
    t0 = time.time()
    specs = record_specs(sets, seed=seed, size=size, n_figures=n_fig, version=version, exclude=exclude)
    if limit is not None:
        specs = specs[:limit]
    if not specs:
        raise ValueError("no records to build: the sources are empty after exclusions")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("shard-*.npz")) + list(out.glob("shard-*.json")):
        old.unlink()
    workers = max(1, workers or os.cpu_count() or 1)
    shards, thumbs, hashes = _render_shards(out, specs, size, be.name, version, cfg["shard_size"], workers, progress)
    seconds = time.time() - t0

    check = near_duplicate_check(held_out_images or [], np.stack(thumbs), hashes,
                                 [s["id"] for s in specs]) if held_out_images else None
    figures = n_fig if limit is None else sum(s["kind"] == "figure" for s in specs)
    manifest = _manifest(specs, sets, shards, check, version=version, seed=seed, size=size, small=small,
                         backend=be.name, figures=figures, exclude=exclude)
    write_json(out / "manifest.json", manifest)
    write_json(out / "build_info.json", {"seconds": round(seconds, 2), "workers": workers, "cpu_count": os.cpu_count(),
                                         "python": platform.python_version(), "platform": platform.platform(),
                                         "records_per_second": round(len(specs) / max(seconds, 1e-9), 1)})
    return manifest


def _render_shards(out: Path, specs: list[dict], size: int, backend: str, version: str, shard_size: int,
                   workers: int, progress=None) -> tuple[list[dict], list[np.ndarray], set[str]]:
    """Render ``specs`` (in ``workers`` processes) into ``shard-NNNNN.npz``/``.json`` files of ``shard_size``
    records, written by two threads meanwhile; returns (shard entries of the manifest, thumbnails, pixel hashes)."""
    shards, pending, thumbs, hashes = [], [], [], set()
    buf_arrays: list[dict] = []
    buf_meta: list[dict] = []

    def flush(pool: ThreadPoolExecutor) -> None:
        idx = len(shards)
        name = f"shard-{idx:05d}"
        arrays = {k: np.stack([a[k] for a in buf_arrays]) for k in _ARRAYS}
        meta = list(buf_meta)
        shards.append({"file": f"{name}.npz", "index": f"{name}.json", "records": len(meta)})
        pending.append((idx, pool.submit(write_npz, out / f"{name}.npz", arrays), pool.submit(write_json, out / f"{name}.json", meta)))
        buf_arrays.clear()
        buf_meta.clear()

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    with ThreadPoolExecutor(max_workers=2) as writer:
        if workers == 1:
            _init_worker(size, backend, version)
            results = map(_work, specs)
            pool = None
        else:
            pool = ctx.Pool(workers, initializer=_init_worker, initargs=(size, backend, version))
            results = pool.imap(_work, specs, chunksize=8)
        try:
            for i, (spec, res) in enumerate(zip(specs, results)):
                thumbs.append(res.pop("thumb"))
                hashes.add(res.pop("hash"))
                buf_arrays.append(res)
                buf_meta.append({k: spec[k] for k in _META_KEYS})
                if len(buf_arrays) == shard_size:
                    flush(writer)
                if progress is not None:
                    progress(i + 1, len(specs))
            if buf_arrays:
                flush(writer)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
        for idx, f_npz, f_json in pending:
            shards[idx]["sha256"] = f_npz.result()
            shards[idx]["index_sha256"] = f_json.result()
            shards[idx]["bytes"] = (out / shards[idx]["file"]).stat().st_size
    return shards, thumbs, hashes


def _manifest(specs: list[dict], sets: list[IconSet], shards: list[dict], image_check: dict | None, *, version: str,
              seed: int, size: int, small: bool, backend: str, figures: int,
              exclude: frozenset[tuple[str, str]]) -> dict:
    """``manifest.json`` of a built world: its settings, counts per style and category, shards and held-out checks."""
    styles: dict[str, int] = {}
    categories: dict[str, int] = {}
    for s in specs:
        styles[s["style"]] = styles.get(s["style"], 0) + 1
        categories[s["category"]] = categories.get(s["category"], 0) + 1
    leak_captions = sum(is_held_out(c) for s in specs for c in s["captions"])
    return {
        "format": WORLD_FORMAT, "version": version, "seed": int(seed), "size": size, "small": bool(small),
        "backend": backend, "records": len(specs), "concepts": len({s["concept"] for s in specs}),
        "styles": dict(sorted(styles.items())), "categories": dict(sorted(categories.items())),
        "figures": figures,
        "flippable": sum(s["flippable"] for s in specs),
        "arrays": {"image": "N×H×W×3 uint8", "lineart": "N×H×W uint8, white lines on black",
                   "depth": "N×H×W uint8, bright = near", "regions": "N×H×W uint8, 0 = background, k = layer group",
                   "keypoints": "N×18×3 float32 (x, y, visible) OpenPose order", "has_pose": "N uint8"},
        "shards": shards, "shard_bytes": sum(s["bytes"] for s in shards),
        "sets": [s.meta() | {"style": s.style, "icons_used": styles.get(s.style, 0)} for s in sets],
        "held_out": {"concept": HELD_OUT.name, "class_noun": HELD_OUT.class_noun, "caption_mentions": leak_captions,
                     "image_check": image_check},
        "excluded_experiment_inputs": sorted(f"{a}/{b}" for a, b in exclude),
        "config": VERSIONS[version],
    }
