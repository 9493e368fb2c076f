"""OpenPose-format pose condition (thesis 4.2.4: "OpenPose"): keypoints → OpenPose-style picture.

Keypoints follow the 18-point OpenPose/COCO body layout (:data:`KEYPOINT_NAMES`), as an ``18×3``
float array ``(x, y, visible)`` in pixels. :func:`render_openpose` draws them like the OpenPose
renderer used by ControlNet: coloured limb ellipses and joint dots on black.

Estimation on any picture (:func:`estimate_keypoints`):

* with ``mediapipe`` installed (optional, never required; ``mediapipe==0.10.21`` ships BlazePose,
  but requires numpy < 2, so it cannot be installed beside condiff's numpy 2), its 33 landmarks
  are mapped onto the 18 OpenPose points;
* otherwise a **silhouette-skeleton heuristic** (not OpenPose, not a network): the largest
  foreground blob is thinned to a one-pixel skeleton; the head is the widest point of its upper
  part, feet and hands are skeleton end points (lowest two, then the two farthest from the
  neck), hips and shoulders are where the skeleton paths from the neck to the feet/hands part,
  knees and elbows the middle of those paths. It suits upright, frontal, limbs-apart figures such
  as the built-in world's procedural figures; on anything else it may find no pose (empty map).
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np

from ._image import as_rgb, foreground_mask

__all__ = [
    "KEYPOINT_NAMES", "LIMBS", "render_openpose", "estimate_keypoints", "pose",
    "skeleton_heuristic_keypoints", "thin",
]

KEYPOINT_NAMES = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)
#: Limb pairs of the OpenPose body renderer (0-based keypoint indices).
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
#: One colour per keypoint/limb, the OpenPose palette (RGB).
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)


def _check_keypoints(kp: np.ndarray) -> np.ndarray:
    kp = np.asarray(kp, np.float32)
    if kp.shape != (18, 3):
        raise ValueError(f"keypoints must be an 18×3 array (x, y, visible), got shape {kp.shape}")
    return kp


def render_openpose(keypoints: np.ndarray | None, size: int | tuple[int, int]) -> np.ndarray:
    """OpenPose-style picture (H×W×3 uint8, black background) of 18 keypoints; ``None`` → all black.

    Limbs are filled ellipses (width ≈ 3 % of the image side) at 60 % opacity, joints are dots.
    """
    h, w = (size, size) if isinstance(size, int) else size
    canvas = np.zeros((h, w, 3), np.uint8)
    if keypoints is None:
        return canvas
    kp = _check_keypoints(keypoints)
    stick = max(1, int(round(0.03 * max(h, w))))
    radius = max(1, int(round(0.025 * max(h, w))))
    for i, (a, b) in enumerate(LIMBS):
        if kp[a, 2] <= 0 or kp[b, 2] <= 0:
            continue
        (xa, ya), (xb, yb) = kp[a, :2], kp[b, :2]
        length = float(np.hypot(xb - xa, yb - ya))
        angle = float(np.degrees(np.arctan2(yb - ya, xb - xa)))
        center = (int(round((xa + xb) / 2)), int(round((ya + yb) / 2)))
        poly = cv2.ellipse2Poly(center, (max(1, int(length / 2)), stick), int(round(angle)), 0, 360, 1)
        layer = canvas.copy()
        cv2.fillConvexPoly(layer, poly, COLORS[i])
        canvas = cv2.addWeighted(canvas, 0.4, layer, 0.6, 0)
    for i in range(18):
        if kp[i, 2] > 0:
            cv2.circle(canvas, (int(round(kp[i, 0])), int(round(kp[i, 1]))), radius, COLORS[i], -1, lineType=cv2.LINE_AA)
    return canvas


# ----------------------------------------------------------------------------- skeleton heuristic

def thin(mask: np.ndarray) -> np.ndarray:
    """Zhang–Suen thinning (1984) of a boolean mask to a one-pixel-wide 8-connected skeleton."""
    img = np.pad(mask.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            p = img
            n = [np.roll(np.roll(p, dy, 0), dx, 1) for dy, dx in
                 ((1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1))]
            # neighbours P2..P9 clockwise from north: roll by +1 on axis 0 brings the north pixel down
            p2, p3, p4, p5, p6, p7, p8, p9 = n
            b = p2 + p3 + p4 + p5 + p6 + p7 + p8 + p9
            seq = [p2, p3, p4, p5, p6, p7, p8, p9, p2]
            a = sum(((seq[k] == 0) & (seq[k + 1] == 1)).astype(np.uint8) for k in range(8))
            if step == 0:
                c = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                c = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            remove = (p == 1) & (b >= 2) & (b <= 6) & (a == 1) & c
            if remove.any():
                img = np.where(remove, 0, img).astype(np.uint8)
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


_NEIGH = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _graph(skel: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    ys, xs = np.nonzero(skel)
    pts = set(zip(ys.tolist(), xs.tolist()))
    return {p: [(p[0] + dy, p[1] + dx) for dy, dx in _NEIGH if (p[0] + dy, p[1] + dx) in pts] for p in sorted(pts)}


def _bfs(graph, start) -> dict:
    prev = {start: None}
    q = deque([start])
    while q:
        u = q.popleft()
        for v in graph[u]:
            if v not in prev:
                prev[v] = u
                q.append(v)
    return prev


def _path(prev, end) -> list:
    out = []
    while end is not None:
        out.append(end)
        end = prev[end]
    return out[::-1]


def skeleton_heuristic_keypoints(image) -> np.ndarray | None:
    """The silhouette-skeleton heuristic of the module docstring; ``None`` when no figure is found."""
    rgb = as_rgb(image)
    fg = foreground_mask(rgb).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    n, lab, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n < 2:
        return None
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask = lab == big
    x0, y0, bw, bh = (int(stats[big, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
    if bh < 16 or stats[big, cv2.CC_STAT_AREA] < 60:
        return None
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    upper = np.zeros_like(mask)
    upper[y0:y0 + max(1, int(0.35 * bh))] = True
    up = np.where(upper & mask, dist, 0)
    # the head: the top-most blob among the widest points of the upper part (the torso may be wider)
    cand = (up >= 0.7 * up.max()).astype(np.uint8)
    nc, clab, cstats, _ = cv2.connectedComponentsWithStats(cand, connectivity=8)
    top = 1 + int(np.argmin(cstats[1:, cv2.CC_STAT_TOP]))
    hy, hx = np.unravel_index(np.argmax(np.where(clab == top, up, 0)), dist.shape)
    r = float(dist[hy, hx])
    if r < 2:
        return None
    skel = thin(mask)
    graph = _graph(skel)
    if len(graph) < 10:
        return None
    nodes = np.array(list(graph.keys()))
    neck_target = np.array([hy + 1.4 * r, hx])
    neck = tuple(nodes[np.argmin(((nodes - neck_target) ** 2).sum(1))].tolist())
    prev = _bfs(graph, neck)
    ends = [p for p, nb in graph.items() if len(nb) == 1 and p in prev and np.hypot(p[0] - hy, p[1] - hx) > 1.5 * r]
    kp = np.zeros((18, 3), np.float32)

    def put(i, y, x):
        kp[i] = (x + 0.5, y + 0.5, 1.0)

    put(0, hy, hx)
    put(1, *neck)
    put(14, hy - 0.25 * r, hx - 0.35 * r)
    put(15, hy - 0.25 * r, hx + 0.35 * r)
    put(16, hy - 0.1 * r, hx - 0.85 * r)
    put(17, hy - 0.1 * r, hx + 0.85 * r)
    feet = sorted(ends, key=lambda p: (-p[0], p[1]))[:2]
    feet = [f for f in feet if f[0] > y0 + 0.6 * bh]
    rest = [p for p in ends if p not in feet]
    hands = sorted(rest, key=lambda p: -len(_path(prev, p)))[:2]
    feet.sort(key=lambda p: p[1])
    hands.sort(key=lambda p: p[1])

    def split_point(paths):
        common = []
        for a, b in zip(*paths):
            if a != b:
                break
            common.append(a)
        return common[-1] if common else paths[0][0]

    if len(feet) == 2:
        paths = [_path(prev, f) for f in feet]
        pelvis = split_point(paths)
        half = max(2.0, 0.5 * r)
        for (hip, knee, ankle), f, sign in (((8, 9, 10), feet[0], -1), ((11, 12, 13), feet[1], 1)):
            put(hip, pelvis[0], pelvis[1] + sign * half)
            path = paths[0] if f == feet[0] else paths[1]
            tail = path[path.index(pelvis):] if pelvis in path else path
            put(knee, *tail[len(tail) // 2])
            put(ankle, *f)
    for (sh, el, wr), hand, sign in zip(((2, 3, 4), (5, 6, 7)), hands, (-1, 1)):
        path = _path(prev, hand)
        if len(path) < 4:
            continue
        j = path[min(len(path) - 1, max(1, int(round(0.8 * r))))]
        put(sh, j[0], neck[1] + sign * max(abs(j[1] - neck[1]), 0.9 * r))
        rest_path = path[path.index(j):]
        put(el, *rest_path[len(rest_path) // 2])
        put(wr, *hand)
    return kp


def _mediapipe_keypoints(rgb: np.ndarray) -> np.ndarray | None:  # pragma: no cover - optional package
    import mediapipe as mp

    with mp.solutions.pose.Pose(static_image_mode=True) as est:
        res = est.process(rgb)
    if res.pose_landmarks is None:
        return None
    h, w = rgb.shape[:2]
    lm = [(p.x * w, p.y * h, float(p.visibility > 0.5)) for p in res.pose_landmarks.landmark]
    # BlazePose index for each OpenPose point (neck = mid-shoulder)
    src = {0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28, 11: 23, 12: 25, 13: 27,
           14: 5, 15: 2, 16: 8, 17: 7}
    kp = np.zeros((18, 3), np.float32)
    for dst, s in src.items():
        kp[dst] = lm[s]
    a, b = lm[11], lm[12]
    kp[1] = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, min(a[2], b[2]))
    return kp


def estimate_keypoints(image, method: str = "auto") -> np.ndarray | None:
    """18×3 keypoints of the figure in a picture: ``"mediapipe"``, ``"skeleton"`` or ``"auto"``
    (mediapipe when installed, else the skeleton heuristic). ``None`` when nothing is found."""
    rgb = as_rgb(image)
    if method not in ("auto", "mediapipe", "skeleton"):
        raise ValueError(f"unknown pose method {method!r}; choose auto, mediapipe or skeleton")
    if method in ("auto", "mediapipe"):
        try:
            return _mediapipe_keypoints(rgb)
        except (ImportError, AttributeError) as err:  # not installed, or a release without the bundled models
            if method == "mediapipe":
                raise ValueError(f"pose method 'mediapipe' needs mediapipe 0.10.21, which requires numpy < 2 and so cannot be installed beside condiff ({err})") from None
    return skeleton_heuristic_keypoints(rgb)


def pose(image, method: str = "auto") -> np.ndarray:
    """OpenPose-style pose picture (H×W×3 uint8) of the figure found in ``image`` (black if none)."""
    rgb = as_rgb(image)
    return render_openpose(estimate_keypoints(rgb, method), rgb.shape[:2])
