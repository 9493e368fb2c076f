"""The six control conditions of a world record (thesis 4.2.4), from its stored maps.

=========  ============================================================================
canny      OpenCV Canny(100, 200) of the picture — the thesis's own operator
lineart    stored exact vector line art (fills white, outlines black, inverted)
softedge   multi-scale DoG of the picture (:mod:`condiff.preprocess.softedge`, HED substitute)
depth      stored 2.5-D inflation of the vector layer groups (bright = near)
normal     normals of the stored depth (:func:`condiff.preprocess.normal.normals_from_depth`)
pose       OpenPose rendering of the exact keypoints for figure records; for every other
           record an all-black map and ``has_pose = 0`` (emoji carry no body pose)
=========  ============================================================================

All are H×W×3 uint8 and deterministic functions of the stored arrays, so the loader can make
them on the fly after flips/crops instead of shipping six extra images per record.
"""

from __future__ import annotations

import numpy as np

from ..preprocess.canny import canny
from ..preprocess.normal import normals_from_depth
from ..preprocess.pose import render_openpose
from ..preprocess.softedge import softedge

__all__ = ["CONDITIONS", "condition_maps", "check_condition_names"]

CONDITIONS = ("canny", "lineart", "softedge", "depth", "normal", "pose")


def check_condition_names(names) -> tuple[str, ...]:
    names = tuple(names)
    bad = [n for n in names if n not in CONDITIONS]
    if bad:
        raise ValueError(f"unknown condition(s) {bad}; choose from {', '.join(CONDITIONS)}")
    return names


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))


def condition_maps(rec: dict, names=CONDITIONS) -> dict[str, np.ndarray]:
    """Condition images for one record: ``rec`` holds ``image``, ``lineart``, ``depth``, ``keypoints``, ``has_pose``."""
    out = {}
    for name in check_condition_names(names):
        if name == "canny":
            out[name] = canny(rec["image"])
        elif name == "lineart":
            out[name] = _rgb(rec["lineart"])
        elif name == "softedge":
            out[name] = softedge(rec["image"])
        elif name == "depth":
            out[name] = _rgb(rec["depth"])
        elif name == "normal":
            out[name] = normals_from_depth(rec["depth"])
        else:
            kp = rec["keypoints"] if int(rec["has_pose"]) else None
            out[name] = render_openpose(kp, rec["image"].shape[:2])
    return out
