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

    joints, head = _joints(ang, width)
    pts = [joints[name] for name in _OPENPOSE]
    pen = _Pen.fitting(pts, head, outline=style == "figure-outline")
    colours = dict(skin=skin[1], hair=hair[1], shirt=shirt[1], trousers=trousers[1], shoes=shoes[1])
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 128 128">'
           + "".join(_body_parts(pen, joints, head, colours, long_hair)) + "</svg>")
    kp = np.zeros((18, 3), np.float32)
    k = size / 128.0
    for i, p in enumerate(pts):
        q = pen.t(p) * k
        kp[i] = (q[0], q[1], 1.0)
    facts = dict(family=family, skin=skin[0], hair=hair[0], shirt=shirt[0], trousers=trousers[0], shoes=shoes[0],
                 long_hair=long_hair)
    return Figure(svg=svg, keypoints=kp, family=family, style=style, facts=facts)


#: the joints in OpenPose/COCO keypoint order (:data:`condiff.preprocess.pose.KEYPOINT_NAMES`)
_OPENPOSE = ("nose", "neck", "sh_r", "el_r", "wr_r", "sh_l", "el_l", "wr_l", "hip_r", "kn_r", "an_r", "hip_l", "kn_l",
             "an_l", "eye_r", "eye_l", "ear_r", "ear_l")


def _joints(ang: dict[str, float], width: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(joint positions in figure units, neck at the origin and y down; the head's centre) of the angles ``ang``
    and the shoulder/hip ``width`` factor."""
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
    joints = dict(nose=nose, neck=neck, sh_r=sh_r, el_r=el_r, wr_r=wr_r, sh_l=sh_l, el_l=el_l, wr_l=wr_l, hip_r=hip_r,
                  kn_r=kn_r, an_r=an_r, hip_l=hip_l, kn_l=kn_l, an_l=an_l, eye_r=eye_r, eye_l=eye_l, ear_r=ear_r,
                  ear_l=ear_l)
    return joints, head


class _Pen:
    """SVG shapes of figure-unit points mapped into the 128-unit viewBox (``figure-outline``: dark outlines)."""

    def __init__(self, scale: float, offset: np.ndarray, outline: bool):
        self.scale, self.offset, self.outline = scale, offset, outline
        self.ol = 1.6 * scale

    @classmethod
    def fitting(cls, pts: list[np.ndarray], head: np.ndarray, outline: bool) -> "_Pen":
        """The pen that fits the figure (with limb thickness and head) into the canvas, 10 % margin."""
        extent = np.array(pts + [head + [0, -_HEAD - 2], head + [-_HEAD - 2, 0], head + [_HEAD + 2, 0]])
        lo, hi = extent.min(0) - 5.0, extent.max(0) + 5.0
        scale = 0.8 * 128 / float(max(hi - lo))
        return cls(scale, np.array([64.0, 64.0]) - scale * (lo + hi) / 2, outline)

    def t(self, p) -> np.ndarray:
        return self.scale * np.asarray(p) + self.offset

    def xy(self, p) -> str:
        q = self.t(p)
        return f"{q[0]:.2f} {q[1]:.2f}"

    def limb(self, a, b, c, color: str, w: float) -> str:
        d = f"M{self.xy(a)}L{self.xy(b)}L{self.xy(c)}"
        out = ""
        if self.outline:
            out += f'<path d="{d}" fill="none" stroke="#1e1e1e" stroke-width="{w + 2 * self.ol:.2f}" stroke-linecap="round" stroke-linejoin="round"/>'
        return out + f'<path d="{d}" fill="none" stroke="{color}" stroke-width="{w:.2f}" stroke-linecap="round" stroke-linejoin="round"/>'

    @property
    def edge(self) -> str:
        """The outline attributes of a filled shape ("" without outlines)."""
        return f' stroke="#1e1e1e" stroke-width="{self.ol:.2f}"' if self.outline else ""

    def disc(self, c, r: float, color: str) -> str:
        q = self.t(c)
        return f'<circle cx="{q[0]:.2f}" cy="{q[1]:.2f}" r="{r * self.scale:.2f}" fill="{color}"{self.edge}/>'


def _body_parts(pen: _Pen, j: dict[str, np.ndarray], head: np.ndarray, colours: dict[str, str],
                long_hair: bool) -> list[str]:
    """The figure's SVG elements back to front: legs and shoes, torso, arms and hands, hair, neck, head, face."""
    scale, xy, t = pen.scale, pen.xy, pen.t
    lw = 7.5 * scale
    parts = [
        pen.limb(j["hip_r"], j["kn_r"], j["an_r"], colours["trousers"], lw * 1.1),
        pen.limb(j["hip_l"], j["kn_l"], j["an_l"], colours["trousers"], lw * 1.1),
        pen.disc(j["an_r"], 4.2, colours["shoes"]),
        pen.disc(j["an_l"], 4.2, colours["shoes"]),
    ]
    torso = [j["sh_r"] + [-1.5, -1.5], j["sh_l"] + [1.5, -1.5], j["hip_l"] + [2.0, 2.0], j["hip_r"] + [-2.0, 2.0]]
    parts.append(f'<path d="M{"L".join(xy(p) for p in torso)}Z" fill="{colours["shirt"]}" stroke-linejoin="round"{pen.edge}/>')
    parts += [
        pen.limb(j["sh_r"], j["el_r"], j["wr_r"], colours["shirt"], lw),
        pen.limb(j["sh_l"], j["el_l"], j["wr_l"], colours["shirt"], lw),
        pen.disc(j["wr_r"], 3.6, colours["skin"]),
        pen.disc(j["wr_l"], 3.6, colours["skin"]),
    ]
    if long_hair:
        parts.append(f'<path d="M{xy(head + [-_HEAD - 1.5, 0])}L{xy(head + [-_HEAD - 1.5, 11])}L{xy(head + [_HEAD + 1.5, 11])}'
                     f'L{xy(head + [_HEAD + 1.5, 0])}Z" fill="{colours["hair"]}"/>')
    nq0, nq1 = t(j["neck"] + [0, 2.0]), t(head)
    parts.append(f'<path d="M{nq0[0]:.2f} {nq0[1]:.2f}L{nq1[0]:.2f} {nq1[1]:.2f}" stroke="{colours["skin"]}" '
                 f'stroke-width="{5.0 * scale:.2f}" stroke-linecap="round"/>')
    parts.append(pen.disc(head, _HEAD, colours["skin"]))
    r = _HEAD * scale
    hq = t(head)
    parts.append(f'<path d="M{hq[0] - r - 0.8 * scale:.2f} {hq[1] + 0.1 * r:.2f}A{r * 1.08:.2f} {r * 1.08:.2f} 0 0 1 '
                 f'{hq[0] + r + 0.8 * scale:.2f} {hq[1] + 0.1 * r:.2f}Q{hq[0]:.2f} {hq[1] - 0.55 * r:.2f} '
                 f'{hq[0] - r - 0.8 * scale:.2f} {hq[1] + 0.1 * r:.2f}Z" fill="{colours["hair"]}"/>')
    parts += [pen.disc(j["eye_r"], 1.3, "#2b2b2b"), pen.disc(j["eye_l"], 1.3, "#2b2b2b")]
    m0, m1 = t(head + [-3.0, 4.5]), t(head + [3.0, 4.5])
    parts.append(f'<path d="M{m0[0]:.2f} {m0[1]:.2f}Q{hq[0]:.2f} {m0[1] + 2.2 * scale:.2f} {m1[0]:.2f} {m1[1]:.2f}" '
                 f'fill="none" stroke="#6b2b2b" stroke-width="{1.1 * scale:.2f}" stroke-linecap="round"/>')
    return parts
