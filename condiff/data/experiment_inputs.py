"""The thesis's three experiments (chapter 4), re-staged in the built-in world.

**How the inputs of experiments 1 and 2 are chosen.** They are drawn by **EmojiOne 2**
(:data:`INPUT_PACKAGE`, CC BY 4.0), an emoji vendor that is in no training set of condiff: no model
saw these pictures, nor any picture of this vendor, nor a skin-tone variant of them (whose line art
would be identical). Their concepts (woman, face with medical mask, smiling face with sunglasses)
are known to the models from the other vendors, so the prompts stay expressible. Every generated
picture of the report is measured against the training index (:mod:`condiff.experiments.memorisation`).

* **Experiment 1** (4.2, sketch → picture): the exact vector line art of EmojiOne's "woman",
  black on white, with the prompt "a woman, glossy shaded style" (the thesis: a Raphael sketch and
  "A painting of a woman in the style of a renaissance artist"). The coloured original ships as a
  reference for metrics.
* **Experiment 2** (4.3, inpainting): three picture + mask tasks mirroring the thesis —
  remove a face mask (EmojiOne "face with medical mask", mask = the mask's elements), remove
  sunglasses (EmojiOne "smiling face with sunglasses", mask = the glasses element; the thesis used a
  VR headset), add a scarf (EmojiOne "woman", mask = chin, neck and the hair below the chin, prompt
  "a woman wearing a scarf"). Masks come from the vector elements (dilated 2 px), so they are exact.
* **Experiment 3** (4.4, personalisation): five pictures of the held-out unicorn
  (:mod:`condiff.data.heldout`) — Noto, Twemoji and Fluent flat, plus two re-posed views (mirrored,
  turned and shrunk) — identifier "sks", class noun "horse", class images of horses from the
  training world, and three prompts: a plain portrait, the subject "in the style of openmoji" (a
  style absent from its five pictures), the subject "in a space suit".

The shipped models were trained on a world without the Noto/OpenMoji pictures that earlier versions
of experiments 1 and 2 used (:data:`EXCLUDED_FROM_TRAINING`; their skin-tone variants stayed in).
:func:`make_experiment_inputs` regenerates the shipped PNG files from the sources (maintainers);
:func:`load_experiment_inputs` reads them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..io import atomic_path
from .heldout import HELD_OUT
from .shards import read_json, write_json
from .sources import IconSet
from .svg_doc import IconGeometry, lineart_svg, picture_svg, subset_svg
from .svg_render import composite_on_white, get_backend

__all__ = ["EXPERIMENTS_DIR", "EXCLUDED_FROM_TRAINING", "INPUT_PACKAGE", "INPUT_STYLE", "fetch_input_set",
           "make_experiment_inputs", "load_experiment_inputs", "load_held_out_images"]

EXPERIMENTS_DIR = Path(__file__).parent / "assets" / "experiments"

#: (style, concept) pictures removed from the world the shipped models were trained on.
EXCLUDED_FROM_TRAINING = frozenset({("noto", "woman"), ("noto", "face-with-medical-mask"),
                                    ("noto", "smiling-face-with-sunglasses"), ("openmoji", "woman")})

#: The npm package (pinned) and style name of the experiment-1/2 inputs: a vendor absent from every training set.
INPUT_PACKAGE = "@iconify-json/emojione@1.2.3"
INPUT_STYLE = "emojione"

_INPAINT = (  # name, icon, element indices of the mask (None: scarf band), prompt, thesis task
    ("remove-face-mask", "face-with-medical-mask", (1, 2, 3), "a smiling face, glossy style",
     "remove the woman's face mask"),
    ("remove-sunglasses", "smiling-face-with-sunglasses", (1,), "a smiling face, glossy style",
     "remove the man's virtual-reality headset"),
    ("add-scarf", "woman", None, "a woman wearing a scarf", "give the woman in a jacket a scarf"),
)
_SUBJECT = (("noto", 0.0, False, 1.0), ("twemoji", 0.0, False, 1.0), ("fluent-emoji-flat", 0.0, False, 1.0),
            ("noto", -14.0, True, 0.8), ("twemoji", 12.0, False, 0.75))
_CLASS_PREFIXES = ("twemoji", "noto", "openmoji", "fluent-emoji-flat")


def _png(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", arr[..., ::-1] if arr.ndim == 3 else arr)
        if not ok:  # pragma: no cover
            raise ValueError(f"could not encode {path}")
        tmp.write_bytes(buf.tobytes())


def _read_png(path: Path) -> np.ndarray:
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise FileNotFoundError(f"{path} is missing or not a PNG; regenerate with `condiff data experiments`")
    return arr[..., ::-1].copy() if arr.ndim == 3 else arr


def _icon(sets: dict[str, IconSet], prefix: str, name: str, size: int):
    icons = {i.name: i for i in sets[prefix].icons}
    if name not in icons:
        raise ValueError(f"icon {prefix}/{name} is not in the sources; use the full npm sources (not --small)")
    i = icons[name]
    return picture_svg(i.body, IconGeometry(i.width, i.height, i.left, i.top), size)


def _repose(img: np.ndarray, angle: float, mirror: bool, scale: float) -> np.ndarray:
    if mirror:
        img = img[:, ::-1]
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    return cv2.warpAffine(np.ascontiguousarray(img), m, (w, h), flags=cv2.INTER_AREA, borderValue=(255, 255, 255))


def fetch_input_set(cache_dir: str | Path) -> IconSet:
    """The EmojiOne set of the experiment-1/2 inputs (``npm pack`` into ``cache_dir`` once)."""
    from .sources import _npm_pack, load_iconify_package

    return load_iconify_package(_npm_pack(INPUT_PACKAGE, Path(cache_dir).expanduser()), INPUT_PACKAGE)


def _scarf_mask(be, svg: str) -> np.ndarray:
    """Chin, neck and the hair below the chin of EmojiOne's woman: where a scarf would sit."""
    face = be.render(subset_svg(svg, [1]))[..., 3] >= 64
    ink = be.render(svg)[..., 3] >= 64
    rows, cols = np.nonzero(face.any(axis=1))[0], np.nonzero(face.any(axis=0))[0]
    chin, h, size = int(rows.max()), int(rows.max() - rows.min()), face.shape[0]
    cx, half = (int(cols.min()) + int(cols.max())) // 2, (int(cols.max()) - int(cols.min())) // 2
    band = np.zeros(face.shape, np.uint8)
    cv2.ellipse(band, (cx, chin + 2), (int(half * 0.7), max(4, h // 9)), 0, 0, 360, 1, -1)
    below = np.zeros_like(face)
    below[chin - h // 16:] = True
    return (band > 0) | (below & ink)


def make_experiment_inputs(sets: list[IconSet], out_dir: str | Path = EXPERIMENTS_DIR, size: int = 128,
                           backend: str = "auto", held_out_sets: list[IconSet] | None = None,
                           input_set: IconSet | None = None) -> dict:
    """Render the experiment inputs into ``out_dir`` (PNG files + ``experiments.json``).

    ``held_out_sets`` must contain the held-out unicorn icons (they are removed from packs), e.g. the
    sets straight from :func:`condiff.data.sources.fetch_npm_sets`; ``input_set`` is the EmojiOne set
    of experiments 1 and 2 (:func:`fetch_input_set`).
    """
    if input_set is None:
        raise ValueError("make_experiment_inputs needs input_set, the EmojiOne set: fetch_input_set(cache_dir)")
    be = get_backend(backend)
    out = Path(out_dir)
    by = {s.prefix: s for s in sets}
    licence = {s.prefix: s.license_spdx for s in sets}
    render = lambda svg: composite_on_white(be.render(svg))  # noqa: E731
    doc: dict = {"size": size, "sources": {}}

    inputs = {INPUT_STYLE: input_set}
    svg = _icon(inputs, INPUT_STYLE, "woman", size)
    sketch = composite_on_white(be.render(lineart_svg(svg, 1.0 * size / 128, size)))
    _png(out / "exp1_sketch.png", sketch)
    _png(out / "exp1_reference.png", render(svg))
    doc["exp1"] = {"sketch": "exp1_sketch.png", "reference": "exp1_reference.png",
                   "prompt": "a woman, glossy shaded style", "thesis_prompt": "A painting of a woman in the style of a renaissance artist",
                   "source": f"{INPUT_STYLE}/woman", "package": INPUT_PACKAGE, "license": input_set.license_spdx}

    doc["exp2"] = []
    for name, icon, elems, prompt, thesis in _INPAINT:
        svg = _icon(inputs, INPUT_STYLE, icon, size)
        image = render(svg)
        mask = be.render(subset_svg(svg, elems))[..., 3] >= 64 if elems is not None else _scarf_mask(be, svg)
        mask = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8))
        _png(out / f"exp2_{name}_image.png", image)
        _png(out / f"exp2_{name}_mask.png", mask * 255)
        doc["exp2"].append({"name": name, "image": f"exp2_{name}_image.png", "mask": f"exp2_{name}_mask.png",
                            "prompt": prompt, "thesis_task": thesis, "source": f"{INPUT_STYLE}/{icon}",
                            "package": INPUT_PACKAGE, "license": input_set.license_spdx})

    held = {s.prefix: s for s in (held_out_sets or [])}
    files = []
    for k, (prefix, angle, mirror, scale) in enumerate(_SUBJECT):
        if prefix not in held:
            raise ValueError("make_experiment_inputs needs held_out_sets with the unicorn icons (npm sources)")
        img = _repose(render(_icon(held, prefix, HELD_OUT.name, size)), angle, mirror, scale)
        _png(out / f"exp3_subject_{k}.png", img)
        files.append({"file": f"exp3_subject_{k}.png", "source": f"{prefix}/{HELD_OUT.name}", "angle": angle,
                      "mirrored": mirror, "scale": scale, "license": held[prefix].license_spdx})
    classes = []
    for prefix in _CLASS_PREFIXES:
        for concept in HELD_OUT.class_concepts:
            f = f"exp3_class_{prefix}_{concept}.png"
            _png(out / f, render(_icon(by, prefix, concept, size)))
            classes.append({"file": f, "source": f"{prefix}/{concept}", "license": licence[prefix]})
    ident, noun = HELD_OUT.identifier, HELD_OUT.class_noun
    doc["exp3"] = {"subject": files, "identifier": ident, "class_noun": noun, "class_images": classes,
                   "prompts": [f"a portrait of a {ident} {noun}", f"a {ident} {noun} in the style of openmoji",
                               f"a {ident} {noun} in a space suit"],
                   "thesis_prompts": ["A photorealistic portrait of a woman",
                                      "A painting of a woman in the style of vincent van gogh starry night",
                                      "A photorealistic portrait of a woman in a space suit"]}
    write_json(out / "experiments.json", doc)
    return doc


def load_experiment_inputs(root: str | Path = EXPERIMENTS_DIR) -> dict:
    """The shipped experiment inputs with pictures as arrays (RGB uint8; masks H×W uint8 in {0, 1})."""
    root = Path(root)
    doc = read_json(root / "experiments.json")
    doc["exp1"]["sketch_image"] = _read_png(root / doc["exp1"]["sketch"])
    doc["exp1"]["reference_image"] = _read_png(root / doc["exp1"]["reference"])
    for task in doc["exp2"]:
        task["image_array"] = _read_png(root / task["image"])
        task["mask_array"] = (_read_png(root / task["mask"]) > 127).astype(np.uint8)
    for item in doc["exp3"]["subject"] + doc["exp3"]["class_images"]:
        item["image"] = _read_png(root / item["file"])
    return doc


def load_held_out_images(root: str | Path = EXPERIMENTS_DIR) -> list[np.ndarray]:
    """The five pictures of the held-out subject (for the leak check of every build)."""
    doc = read_json(Path(root) / "experiments.json")
    return [_read_png(Path(root) / s["file"]) for s in doc["exp3"]["subject"]]
