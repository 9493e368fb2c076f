"""Pluggable SVG rasterisers: resvg (self-contained wheel) and cairosvg (needs the system libcairo).

Both turn a complete SVG string into an ``H×W×4`` uint8 RGBA array (straight alpha) at the size
the SVG declares. ``get_backend("auto")`` prefers resvg — a single manylinux/abi3 wheel
(``resvg-py``) with no system libraries, so a GPU machine without libcairo renders the same pixels —
and falls back to cairosvg. The two agree to within about one grey level on average (antialiasing
differs by a fraction of a pixel along edges; ``tests/test_data_render.py`` measures it), so a data
set is only byte-reproducible with the same backend, which the manifest records.
"""

from __future__ import annotations

import functools
from typing import Callable, Protocol

import cv2
import numpy as np

__all__ = ["RenderBackend", "get_backend", "available_backends", "composite_on_white", "decode_png"]


class RenderBackend(Protocol):
    name: str

    def render(self, svg: str) -> np.ndarray:  # (H, W, 4) uint8 RGBA, straight alpha
        ...


def decode_png(png: bytes) -> np.ndarray:
    """PNG bytes → ``H×W×4`` RGBA uint8 (straight alpha)."""
    arr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("renderer returned bytes that are not a PNG image")
    if arr.ndim == 2:
        arr = np.dstack([arr, arr, arr, np.full_like(arr, 255)])
    elif arr.shape[2] == 3:
        arr = np.dstack([arr[..., ::-1], np.full(arr.shape[:2], 255, np.uint8)])
        return np.ascontiguousarray(arr)
    rgba = arr[..., [2, 1, 0, 3]]
    return np.ascontiguousarray(rgba)


class _Resvg:
    name = "resvg"

    def __init__(self) -> None:
        import resvg_py  # noqa: F401  (import error surfaces in get_backend)

        self._fn = resvg_py.svg_to_bytes

    def render(self, svg: str) -> np.ndarray:
        return decode_png(bytes(self._fn(svg_string=svg, skip_system_fonts=True)))


class _Cairo:
    name = "cairosvg"

    def __init__(self) -> None:
        import cairosvg  # noqa: F401

        self._fn = cairosvg.svg2png

    def render(self, svg: str) -> np.ndarray:
        return decode_png(self._fn(bytestring=svg.encode("utf-8")))


_FACTORIES: dict[str, Callable[[], RenderBackend]] = {"resvg": _Resvg, "cairosvg": _Cairo}


def available_backends() -> list[str]:
    """Names of the backends importable on this machine, preferred first."""
    names = []
    for name, make in _FACTORIES.items():
        try:
            make()
        except (ImportError, OSError):
            continue
        names.append(name)
    return names


@functools.lru_cache(maxsize=None)
def get_backend(name: str = "auto") -> RenderBackend:
    """A renderer by name: ``"resvg"``, ``"cairosvg"`` or ``"auto"`` (first importable of those)."""
    if name == "auto":
        for cand in _FACTORIES:
            try:
                return _FACTORIES[cand]()
            except (ImportError, OSError):
                continue
        raise ValueError(
            "no SVG renderer available: install the self-contained wheel `pip install resvg-py` "
            "(or cairosvg together with the system libcairo)"
        )
    if name not in _FACTORIES:
        raise ValueError(f"unknown SVG backend {name!r}; choose one of {['auto', *_FACTORIES]}")
    try:
        return _FACTORIES[name]()
    except (ImportError, OSError) as err:
        hint = "pip install resvg-py" if name == "resvg" else "pip install cairosvg and apt-get install libcairo2"
        raise ValueError(f"SVG backend {name!r} is not usable here ({err}); {hint}") from err


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Straight-alpha RGBA → RGB over a white background (uint8, rounded)."""
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"expected an H×W×4 RGBA array, got shape {rgba.shape}")
    a = rgba[..., 3:4].astype(np.uint32)
    rgb = rgba[..., :3].astype(np.uint32)
    out = (rgb * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)
