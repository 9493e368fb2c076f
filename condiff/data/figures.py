"""Procedural articulated figures with known keypoints — the pose source of the built-in world.

A figure is a front-facing person drawn as SVG (so it goes through the same renderer, line-art and
depth construction as the emoji): round head with hair and face, a torso polygon, limbs as
round-capped strokes (capsules), hands and shoes. Its 18 OpenPose/COCO keypoints
(:data:`condiff.preprocess.pose.KEYPOINT_NAMES`) are computed from the same joint angles that draw
it, so the pose condition of a figure record is exact. Limbs are constant-width capsules, for which
the inflation depth (:mod:`condiff.preprocess.depth`) is the exact circular cross-section.

Poses come from named families (standing, arms up, waving, T-pose, jumping, pointing, kicking,
squatting, dancing) with jittered angles; everything is drawn from one seeded ``numpy`` generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Figure", "POSE_FAMILIES", "sample_figure", "FIGURE_STYLES"]

POSE_FAMILIES = ("standing", "arms up", "waving", "t-pose", "jumping", "pointing", "kicking", "squatting", "dancing")
FIGURE_STYLES = ("figure-flat", "figure-outline")

SKIN = (("light", "#f7dece"), ("medium-light", "#f3d2a2"), ("medium", "#d5ab88"), ("medium-dark", "#af7e57"), ("dark", "#7c533e"))
HAIR = (("black", "#232020"), ("brown", "#6b3f1f"), ("blond", "#e8c15a"), ("red", "#b5442a"), ("grey", "#9a9a9a"))
CLOTH = (
    ("red", "#d83a3a"), ("orange", "#f08a24"), ("yellow", "#f2c919"), ("green", "#3aa655"), ("teal", "#1f9e9a"),
    ("blue", "#2f6fd6"), ("navy", "#243a73"), ("purple", "#7c4bc2"), ("pink", "#e86fa8"), ("brown", "#7a5230"),
    ("grey", "#7d8088"), ("black", "#2a2a2e"),
)

# segment lengths in "figure units" (head radius = 10)
_UPPER_ARM, _FOREARM, _THIGH, _SHIN = 17.0, 15.0, 20.0, 19.0
_TORSO, _SHOULDER, _HIP, _HEAD = 31.0, 12.0, 7.0, 10.0


@dataclass(frozen=True)
class Figure:
    """A drawn figure: its SVG, keypoints (18×3, px of the ``size`` canvas) and caption facts."""

    svg: str
    keypoints: np.ndarray
    family: str
    style: str
    facts: dict


def _angles(family: str, rng: np.random.Generator) -> dict[str, float]:
    """Joint angles in degrees: limb direction measured from straight down, positive = outward."""
    j = lambda s: float(rng.normal(0.0, s))  # noqa: E731
    a = dict(ra=20 + j(5), rf=0 + j(5), la=20 + j(5), lf=0 + j(5), rl=8 + j(2), rs=0 + j(2), ll=8 + j(2), ls=0 + j(2))
    if family == "arms up":
        a.update(ra=155 + j(8), rf=5 + j(5), la=155 + j(8), lf=5 + j(5))
    elif family == "waving":
        side = "r" if rng.random() < 0.5 else "l"
        a.update({f"{side}a": 110 + j(10), f"{side}f": 50 + j(10)})
    elif family == "t-pose":
        a.update(ra=90 + j(4), rf=0 + j(3), la=90 + j(4), lf=0 + j(3))
    elif family == "jumping":
        a.update(ra=130 + j(8), rf=10 + j(6), la=130 + j(8), lf=10 + j(6), rl=28 + j(4), ll=28 + j(4))
    elif family == "pointing":
        side = "r" if rng.random() < 0.5 else "l"
        a.update({f"{side}a": 88 + j(6), f"{side}f": -2 + j(3)})
    elif family == "kicking":
        side = "r" if rng.random() < 0.5 else "l"
        a.update({f"{side}l": 65 + j(8), f"{side}s": -25 + j(8)}, ra=60 + j(8), la=60 + j(8))
    elif family == "squatting":
        a.update(rl=60 + j(5), rs=-55 + j(5), ll=60 + j(5), ls=-55 + j(5), ra=70 + j(8), la=70 + j(8))
    elif family == "dancing":
        a = {k: float(v) for k, v in zip(
            ("ra", "rf", "la", "lf", "rl", "rs", "ll", "ls"),
            (rng.uniform(20, 170), rng.uniform(-40, 60), rng.uniform(20, 170), rng.uniform(-40, 60),
             rng.uniform(5, 45), rng.uniform(-30, 10), rng.uniform(5, 45), rng.uniform(-30, 10)))}
    elif family != "standing":
        raise ValueError(f"unknown pose family {family!r}; choose one of {POSE_FAMILIES}")
    return a


def _limb(start: np.ndarray, a1: float, l1: float, a2: float, l2: float, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Joint positions of a two-segment limb; ``side`` −1 = figure's right (image left), +1 = left."""
    def d(deg: float) -> np.ndarray:
        r = math.radians(deg)
        return np.array([side * math.sin(r), math.cos(r)])

    mid = start + l1 * d(a1)
    end = mid + l2 * d(a1 + a2)
    return mid, end


def _pick(rng: np.random.Generator, table):
    return table[int(rng.integers(len(table)))]


def sample_figure(rng: np.random.Generator, size: int = 128, family: str | None = None, style: str | None = None) -> Figure:
    """Draw one random figure (family and style random unless given) on a ``size`` px canvas."""
    family = family or POSE_FAMILIES[int(rng.integers(len(POSE_FAMILIES)))]
    style = style or FIGURE_STYLES[int(rng.integers(len(FIGURE_STYLES)))]
    if style not in FIGURE_STYLES:
        raise ValueError(f"unknown figure style {style!r}; choose one of {FIGURE_STYLES}")
    ang = _angles(family, rng)
    skin, hair, shirt = _pick(rng, SKIN), _pick(rng, HAIR), _pick(rng, CLOTH)
    trousers = _pick(rng, [c for c in CLOTH if c[0] != shirt[0]])
    shoes = _pick(rng, (("black", "#26262a"), ("brown", "#5a3a22"), ("red", "#b02a2a")))
    long_hair = bool(rng.random() < 0.4)
    width = float(rng.uniform(0.9, 1.15))

    neck = np.array([0.0, 0.0])
    head = neck + np.array([0.0, -_HEAD - 3.0])
    sh_r, sh_l = neck + np.array([-_SHOULDER * width, 3.0]), neck + np.array([_SHOULDER * width, 3.0])
    pelvis = neck + np.array([0.0, _TORSO])
    hip_r, hip_l = pelvis + np.array([-_HIP * width, 0.0]), pelvis + np.array([_HIP * width, 0.0])
    el_r, wr_r = _limb(sh_r, ang["ra"], _UPPER_ARM, ang["rf"], _FOREARM, -1)
    el_l, wr_l = _limb(sh_l, ang["la"], _UPPER_ARM, ang["lf"], _FOREARM, +1)
    kn_r, an_r = _limb(hip_r, ang["rl"], _THIGH, ang["rs"], _SHIN, -1)
    kn_l, an_l = _limb(hip_l, ang["ll"], _THIGH, ang["ls"], _SHIN, +1)
    nose = head + np.array([0.0, 2.0])
    eye_r, eye_l = head + np.array([-3.5, -1.0]), head + np.array([3.5, -1.0])
    ear_r, ear_l = head + np.array([-_HEAD, 0.0]), head + np.array([_HEAD, 0.0])
    pts = [nose, neck, sh_r, el_r, wr_r, sh_l, el_l, wr_l, hip_r, kn_r, an_r, hip_l, kn_l, an_l, eye_r, eye_l, ear_r, ear_l]

    # fit the figure (with limb thickness and head) into the canvas, 10 % margin
    extent = np.array(pts + [head + [0, -_HEAD - 2], head + [-_HEAD - 2, 0], head + [_HEAD + 2, 0]])
    lo, hi = extent.min(0) - 5.0, extent.max(0) + 5.0
    scale = 0.8 * 128 / float(max(hi - lo))
    offset = np.array([64.0, 64.0]) - scale * (lo + hi) / 2
    t = lambda p: scale * np.asarray(p) + offset  # noqa: E731
    k = size / 128.0

    def xy(p) -> str:
        q = t(p)
        return f"{q[0]:.2f} {q[1]:.2f}"

    lw = 7.5 * scale
    outline = style == "figure-outline"
    ol = 1.6 * scale

    def stroke_limb(a, b, c, color: str, w: float) -> str:
        d = f"M{xy(a)}L{xy(b)}L{xy(c)}"
        out = ""
        if outline:
            out += f'<path d="{d}" fill="none" stroke="#1e1e1e" stroke-width="{w + 2 * ol:.2f}" stroke-linecap="round" stroke-linejoin="round"/>'
        return out + f'<path d="{d}" fill="none" stroke="{color}" stroke-width="{w:.2f}" stroke-linecap="round" stroke-linejoin="round"/>'

    def disc(c, r: float, color: str) -> str:
        q = t(c)
        extra = f' stroke="#1e1e1e" stroke-width="{ol:.2f}"' if outline else ""
        return f'<circle cx="{q[0]:.2f}" cy="{q[1]:.2f}" r="{r * scale:.2f}" fill="{color}"{extra}/>'

    parts = [
        stroke_limb(hip_r, kn_r, an_r, trousers[1], lw * 1.1),
        stroke_limb(hip_l, kn_l, an_l, trousers[1], lw * 1.1),
        disc(an_r, 4.2, shoes[1]),
        disc(an_l, 4.2, shoes[1]),
    ]
    torso = [sh_r + [-1.5, -1.5], sh_l + [1.5, -1.5], hip_l + [2.0, 2.0], hip_r + [-2.0, 2.0]]
    extra = f' stroke="#1e1e1e" stroke-width="{ol:.2f}"' if outline else ""
    parts.append(f'<path d="M{"L".join(xy(p) for p in torso)}Z" fill="{shirt[1]}" stroke-linejoin="round"{extra}/>')
    parts += [
        stroke_limb(sh_r, el_r, wr_r, shirt[1], lw),
        stroke_limb(sh_l, el_l, wr_l, shirt[1], lw),
        disc(wr_r, 3.6, skin[1]),
        disc(wr_l, 3.6, skin[1]),
    ]
    if long_hair:
        parts.append(f'<path d="M{xy(head + [-_HEAD - 1.5, 0])}L{xy(head + [-_HEAD - 1.5, 11])}L{xy(head + [_HEAD + 1.5, 11])}'
                     f'L{xy(head + [_HEAD + 1.5, 0])}Z" fill="{hair[1]}"/>')
    nq0, nq1 = t(neck + [0, 2.0]), t(head)
    parts.append(f'<path d="M{nq0[0]:.2f} {nq0[1]:.2f}L{nq1[0]:.2f} {nq1[1]:.2f}" stroke="{skin[1]}" '
                 f'stroke-width="{5.0 * scale:.2f}" stroke-linecap="round"/>')
    parts.append(disc(head, _HEAD, skin[1]))
    r = _HEAD * scale
    hq = t(head)
    parts.append(f'<path d="M{hq[0] - r - 0.8 * scale:.2f} {hq[1] + 0.1 * r:.2f}A{r * 1.08:.2f} {r * 1.08:.2f} 0 0 1 '
                 f'{hq[0] + r + 0.8 * scale:.2f} {hq[1] + 0.1 * r:.2f}Q{hq[0]:.2f} {hq[1] - 0.55 * r:.2f} '
                 f'{hq[0] - r - 0.8 * scale:.2f} {hq[1] + 0.1 * r:.2f}Z" fill="{hair[1]}"/>')
    parts += [disc(eye_r, 1.3, "#2b2b2b"), disc(eye_l, 1.3, "#2b2b2b")]
    m0, m1 = t(head + [-3.0, 4.5]), t(head + [3.0, 4.5])
    parts.append(f'<path d="M{m0[0]:.2f} {m0[1]:.2f}Q{hq[0]:.2f} {m0[1] + 2.2 * scale:.2f} {m1[0]:.2f} {m1[1]:.2f}" '
                 f'fill="none" stroke="#6b2b2b" stroke-width="{1.1 * scale:.2f}" stroke-linecap="round"/>')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 128 128">'
           + "".join(parts) + "</svg>")
    kp = np.zeros((18, 3), np.float32)
    for i, p in enumerate(pts):
        q = t(p) * k
        kp[i] = (q[0], q[1], 1.0)
    facts = dict(family=family, skin=skin[0], hair=hair[0], shirt=shirt[0], trousers=trousers[0], shoes=shoes[0],
                 long_hair=long_hair)
    return Figure(svg=svg, keypoints=kp, family=family, style=style, facts=facts)
