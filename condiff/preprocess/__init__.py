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

:func:`get_preprocessor` returns the extractor wrapped in its domain check
(:mod:`condiff.preprocess.domain`): a picture far from what the extractor is made for (a
photograph given to depth or pose, a pose map with no figure) gives a one-line UserWarning.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import numpy as np

from ._image import as_rgb
from .domain import DOMAINS, domain_warning
from .canny import canny
from .depth import estimate_depth
from .lineart import lineart
from .normal import estimate_normal
from .pose import pose
from .softedge import softedge

__all__ = ["PREPROCESSORS", "DOMAINS", "get_preprocessor", "list_preprocessors"]

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
    """The extractor registered under ``name``, warning when a picture is far from its domain (see the
    module doc); unknown names raise a ValueError listing the valid ones."""
    try:
        fn = PREPROCESSORS[name]
    except KeyError:
        raise ValueError(f"unknown preprocessor {name!r}; available: {', '.join(PREPROCESSORS)}") from None

    @functools.wraps(fn)
    def checked(image, *args, **kwargs) -> np.ndarray:
        rgb = as_rgb(image)
        out = fn(rgb, *args, **kwargs)
        note = domain_warning(name, rgb, out)
        if note:
            warnings.warn(note, UserWarning, stacklevel=2)
        return out

    return checked
