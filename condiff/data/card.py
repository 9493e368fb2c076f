"""The data card of a built world (Markdown): sources, licences, counts, construction, checks."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_path
from .experiment_inputs import EXPERIMENTS_DIR
from .shards import read_json

__all__ = ["data_card", "write_data_card"]

_CONDITIONS = (
    ("canny", "OpenCV `Canny(100, 200)` of the picture (the thesis's operator)", "exact operator"),
    ("lineart", "vector line art: every fill white, every outline stroked black, drawn in order (hidden lines removed by the renderer); inverted to white-on-black", "exact from the SVG"),
    ("softedge", "multi-scale difference of Gaussians, σ ∈ {0.8, 1.6, 3.2} px, max over RGB, `1 − exp(−10 r)`", "substitute for HED"),
    ("depth", "2.5-D inflation: each of ≤ 8 layer groups (drawing order) is a pillow `β + sqrt(d(2R − d))` over its distance transform, stacked; bright = near", "construction, not a depth network"),
    ("normal", "Sobel normals of the depth (height = depth/255 × 0.25·size px), RGB = (x right, y up, z to viewer)", "derived from the construction"),
    ("pose", "OpenPose-18 rendering of exact keypoints for procedural figures; all-black map and `has_pose = 0` for emoji", "exact for figures"),
)
_PREPROCESSORS = (
    ("canny", "OpenCV Canny"),
    ("lineart", "Canny on each RGB channel (region outlines) + dark-stroke detector — not the learned line-art annotator"),
    ("softedge", "the same multi-scale DoG — not HED"),
    ("depth", "inflation of estimated layers (foreground, then flat-colour regions) — not a monocular depth network (DPT)"),
    ("normal", "normals of that depth estimate — not a normal network"),
    ("pose", "mediapipe BlazePose if installed, else a silhouette-skeleton heuristic — not OpenPose"),
)


def data_card(manifest: dict, build_info: dict | None = None, pack_info: dict | None = None) -> str:
    """Markdown data card for a world ``manifest`` (+ optional build timing and pack facts)."""
    m = manifest
    L = [f"# Data card: condiff built-in world, version {m['version']}{' (small)' if m['small'] else ''}", ""]
    L += ["An offline, captioned, multi-style image data set with the six ControlNet conditions of thesis 4.2.4, "
          "rendered from vector emoji sets (npm), public-domain clip art (Debian) and procedural figures. "
          "Built with `condiff data build`.", ""]
    L += ["## Summary", "", "| item | value |", "|---|---|",
          f"| records | {m['records']:,} |", f"| distinct concepts | {m['concepts']:,} |",
          f"| styles | {len(m['styles'])}: " + ", ".join(f"{k} ({v:,})" for k, v in m["styles"].items()) + " |",
          f"| procedural figures | {m['figures']:,} |",
          f"| mirror-safe records (random flips allowed) | {m['flippable']:,} |",
          f"| resolution | {m['size']}×{m['size']} RGB, composited on white |",
          f"| shards | {len(m['shards'])} × ≤{m['config']['shard_size']} records, {m['shard_bytes'] / 2**20:.1f} MiB in all (deterministic `.npz`, sha256 in `manifest.json`) |",
          f"| seed / renderer | {m['seed']} / {m['backend']} |"]
    if build_info:
        L.append(f"| build time | {build_info['seconds']:.0f} s with {build_info['workers']} worker processes "
                 f"({build_info['records_per_second']:.0f} records/s; Python {build_info['python']}) |")
    if pack_info:
        L.append(f"| source pack | {pack_info['bytes'] / 2**20:.2f} MiB (xz JSON), sha256 `{pack_info['sha256'][:16]}…` |")
    L += ["", "Categories: " + ", ".join(f"{k} {v:,}" for k, v in m["categories"].items()) + ".", ""]
    L += ["## Sources, licences and attribution", "", "| style | set | package | author | licence | records |", "|---|---|---|---|---|---|"]
    for s in m["sets"]:
        L.append(f"| {s['style']} | {s['title']} | `{s['package']}` | [{s['author']}]({s['author_url']}) | "
                 f"[{s['license_title']}]({s['license_url']}) | {s['icons_used']:,} |")
    L.append(f"| figure-flat, figure-outline | procedural figures (condiff.data.figures) | — | condiff | Apache-2.0 | "
             f"{m['styles'].get('figure-flat', 0) + m['styles'].get('figure-outline', 0):,} |")
    L += ["", "The pictures are renderings of the vendors' SVG files (changed: re-framed to a square with a 4 % margin, "
          "composited on white, rasterised at the stated size). Redistribution must keep this attribution; OpenMoji "
          "derivatives are CC BY-SA 4.0 (share-alike). Licence texts/links: `condiff/data/assets/LICENSES.md`.", ""]
    L += ["## Captions", "", "Three paraphrases per record from ten icon templates / six figure templates, filled with the "
          "humanised CLDR name (\"cat-face\" → \"cat face\", skin tones → \", medium-dark skin tone\"), the category and a "
          "style word (vendor name or descriptor such as \"flat\", \"glossy\", \"outlined\"); figures name pose, clothes "
          "colours and hair. The loader picks one per visit and drops it (empty caption) with p = 0.1 for "
          "classifier-free guidance.", ""]
    L += ["## Conditions (training pairs)", "", "| condition | how | status |", "|---|---|---|"]
    L += [f"| {a} | {b} | {c} |" for a, b, c in _CONDITIONS]
    L += ["", "Inference-time preprocessors (`condiff.preprocess.get_preprocessor(name)`, any RGB picture):", ""]
    L += [f"- **{a}**: {b}" for a, b in _PREPROCESSORS]
    L += ["", "## Masks", "", "`regions` (top-most visible layer group per pixel) gives object and region masks from the vector "
          "sources; `condiff.data.masks` adds seeded synthetic masks: full 25 %, region 20 %, object 10 %, strokes 20 %, "
          "boxes 10 %, large (≥ 40 %) 15 %.", ""]
    ho = m["held_out"]
    chk = ho.get("image_check") or {}
    L += ["## Held-out personalisation concept", "",
          f"Concept **{ho['concept']}** (class noun \"{ho['class_noun']}\") is removed by name from every source and pack. "
          f"Training captions mentioning it: {ho['caption_mentions']}."]
    if chk:
        L.append(f"Image check of its 5 reference pictures (and mirrors) against all {m['records']:,} training pictures: "
                 f"{chk['exact_matches']} exact matches, highest thumbnail cosine {chk['max_cosine']} "
                 f"(nearest `{chk['nearest']}`, near-duplicate threshold {chk['threshold']}) — "
                 f"{'passed' if chk['passed'] else 'FAILED'}.")
    L += ["", "## Experiment inputs (`condiff/data/assets/experiments`)", ""]
    exp_path = EXPERIMENTS_DIR / "experiments.json"
    if exp_path.is_file():
        e = read_json(exp_path)
        L.append(f"- Exp. 1 (sketch → picture): `{e['exp1']['sketch']}` ({e['exp1']['source']}, {e['exp1']['license']}), "
                 f"prompt \"{e['exp1']['prompt']}\".")
        for t in e["exp2"]:
            L.append(f"- Exp. 2 `{t['name']}` (thesis: {t['thesis_task']}): `{t['image']}` + `{t['mask']}` "
                     f"({t['source']}, {t['license']}), prompt \"{t['prompt']}\".")
        x = e["exp3"]
        L.append(f"- Exp. 3: {len(x['subject'])} subject pictures ({', '.join(s['source'] for s in x['subject'])}), "
                 f"identifier \"{x['identifier']}\", class noun \"{x['class_noun']}\", {len(x['class_images'])} class images; "
                 f"prompts: " + "; ".join(f"\"{p}\"" for p in x["prompts"]) + ".")
    L.append(f"- Excluded from training: {', '.join(m['excluded_experiment_inputs']) or 'none'}.")
    L += ["", "## Reproducibility and offline builds", "",
          "Same version + seed + sources + renderer → byte-identical shards and manifest, whatever the number of "
          "worker processes (tested on the small build; the full build with 1 and 2 workers gave identical "
          "manifests). Depth uses an exact float64 Euclidean distance transform: "
          "a float32 SIMD transform had flipped single depth levels (±1) in 3 of 19,844 records between two full "
          "builds, its last bit depending on memory alignment.", "",
          "On a machine without network (only Python, numpy, opencv-python-headless, pillow, scipy, torch): carry the "
          "pack (`condiff data pack`) and the `resvg-py` wheel (manylinux2014 x86_64, abi3, 1.4 MB, no system "
          "libraries), then", "",
          "```bash",
          "pip install --no-deps resvg_py-0.5.0-cp310-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
          "python -m condiff.data build --from-pack build/world-pack-v1.json.xz --out build/world",
          "```", ""]
    return "\n".join(L)


def write_data_card(world: str | Path, out: str | Path, pack_info: dict | None = None) -> Path:
    world = Path(world)
    info = read_json(world / "build_info.json") if (world / "build_info.json").is_file() else None
    text = data_card(read_json(world / "manifest.json"), info, pack_info)
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text(text + "\n", "utf-8")
    return out
