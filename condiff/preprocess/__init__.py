"""Control-condition extractors (thesis 4.2.4): canny, lineart, softedge, depth, normal, pose.

Each works offline on any RGB picture (numpy H×W×3 uint8 or PIL) and returns an H×W×3 uint8
condition image. Where the thesis used a network whose weights cannot be had offline, the
extractor here is a named substitute (see each module):

=========  ==========================================================================
canny      OpenCV Canny (the thesis's own operator)
lineart    region outlines + dark strokes (substitute for the learned line-art annotator)
softedge   multi-scale difference of Gaussians (substitute for HED)
depth      2.5-D inflation estimate (substitute for a monocular depth network, DPT)
normal     normals of the inflation depth estimate (substitute for a normal network)
pose       mediapipe BlazePose if installed, else a silhouette-skeleton heuristic (not OpenPose)
=========  ==========================================================================
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .canny import canny
from .depth import estimate_depth
from .lineart import lineart
from .normal import estimate_normal
from .pose import pose
from .softedge import softedge

__all__ = ["PREPROCESSORS", "get_preprocessor", "list_preprocessors"]

Preprocessor = Callable[..., np.ndarray]

PREPROCESSORS: dict[str, Preprocessor] = {
    "canny": canny,
    "lineart": lineart,
    "softedge": softedge,
    "depth": estimate_depth,
    "normal": estimate_normal,
    "pose": pose,
}


def list_preprocessors() -> list[str]:
    """Registered condition names, in the thesis's order of the six ControlNets."""
    return list(PREPROCESSORS)


def get_preprocessor(name: str) -> Preprocessor:
    """The extractor registered under ``name``; unknown names raise a ValueError listing the valid ones."""
    try:
        return PREPROCESSORS[name]
    except KeyError:
        raise ValueError(f"unknown preprocessor {name!r}; available: {', '.join(PREPROCESSORS)}") from None
