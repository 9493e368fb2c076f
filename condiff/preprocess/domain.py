"""What each control-condition extractor is made for, and a check that a picture is within it.

The extractors other than canny are constructions tuned to the built-in world's pictures: flat-
or gradient-coloured drawings (emoji, clip art, procedural figures) composited on a plain
background (docs/data_card.md). On a photograph they still return a map, but not the one a
network annotator (DPT depth, HED, OpenPose) would give. :data:`DOMAINS` states each one's domain
(shown in ``condiff control --help``); :func:`domain_warning` says, in one line, when a picture is
far from it:

* **photograph-like** (any extractor but canny and softedge): the picture has no plain border
  (under 60 % of the border within 24 levels of its median colour) *and* many colours (the most
  frequent 5-bit-per-channel colours need more than :data:`PHOTO_COLOURS` bins to cover 90 % of
  the pixels). Drawings of the built-in world have a white border and a few dozen colour bins.
* **pose**: no figure was found (the map is all black), whatever the picture.

Offline pose models for photographs: mediapipe's BlazePose is used when mediapipe is installed,
but mediapipe 0.10.x requires numpy < 2 and so cannot be installed beside condiff (numpy 2);
no other pose network ships offline with a PyPI package condiff can depend on.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DOMAINS", "PHOTO_COLOURS", "photo_likeness", "domain_warning"]

_DRAWINGS = "drawings on a plain background (emoji, clip art, the built-in world)"
#: One line per extractor: what it is and which pictures it suits.
DOMAINS: dict[str, str] = {
    "canny": "OpenCV Canny edges; any picture",
    "lineart": f"region outlines + dark strokes, not the learned line-art annotator; {_DRAWINGS}",
    "softedge": "multi-scale difference of Gaussians, not HED; any picture (soft, noisier on photographs)",
    "depth": f"2.5-D inflation of flat-colour regions, not a depth network; {_DRAWINGS}",
    "normal": f"normals of that inflation depth, not a normal network; {_DRAWINGS}",
    "pose": "silhouette skeleton of one upright, limbs-apart figure, not OpenPose (mediapipe BlazePose when "
            "installed; it needs numpy < 2); drawn figures on a plain background",
}
_PHOTO_CHECKED = ("lineart", "depth", "normal", "pose")
PHOTO_COLOURS = 400


def photo_likeness(rgb: np.ndarray) -> tuple[float, int]:
    """(fraction of border pixels close to the border's median colour, number of 5-bit colour bins
    covering 90 % of the pixels) of an H×W×3 uint8 picture."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], axis=0).astype(np.int16)
    plain = float((np.abs(border - np.median(border, axis=0)).max(axis=1) <= 24).mean())
    q = (rgb >> 3).astype(np.int32)
    _, counts = np.unique((q[..., 0] << 10) | (q[..., 1] << 5) | q[..., 2], return_counts=True)
    counts = np.sort(counts)[::-1]
    bins = int(np.searchsorted(np.cumsum(counts), 0.9 * counts.sum()) + 1)
    return plain, bins


def domain_warning(name: str, rgb: np.ndarray, condition: np.ndarray | None = None) -> str | None:
    """A one-line warning when ``rgb`` (H×W×3 uint8) is far from extractor ``name``'s domain, else None.
    ``condition``: the extractor's output (for pose, an all-black map means no figure was found)."""
    if name == "pose" and condition is not None and not np.any(condition):
        return ("pose: no figure found, the condition is empty; the pose extractor finds one upright drawn figure "
                "on a plain background (no photograph pose model is installed)")
    if name in _PHOTO_CHECKED:
        plain, bins = photo_likeness(rgb)
        if plain < 0.6 and bins > PHOTO_COLOURS:
            return (f"{name}: the picture looks like a photograph ({bins} colour bins, {plain:.0%} plain border); "
                    f"this extractor is made for {_DRAWINGS}, so the condition may not show what a photograph holds")
    return None
