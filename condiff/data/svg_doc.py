"""SVG documents of the built-in world: wrapping, layer splitting and the exact line-art transform.

An icon arrives as an Iconify ``body`` (the inner markup of an ``<svg>``) plus its view box. This
module turns it into complete SVG strings for three kinds of render:

* the picture itself (:func:`picture_svg`), square, with a small margin;
* one SVG per *layer group* (:func:`layer_svgs`): the drawable top-level elements, in drawing
  order, merged into at most ``max_layers`` consecutive groups; rendering each alone gives the
  full (un-occluded) mask of every group, from which the 2.5-D depth construction
  (:func:`condiff.preprocess.depth.inflate_layers`) and the region masks are made;
* the exact line art (:func:`lineart_svg`): every fill painted white and every outline stroked
  black, drawn in the original order, so later shapes hide the outlines of earlier ones — the
  visible vector outlines, with hidden-line removal done by the renderer itself.

Pure string/XML work (``xml.etree``); no rendering here, see :mod:`condiff.data.svg_render`.
"""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

__all__ = ["IconGeometry", "picture_svg", "layer_svgs", "subset_svg", "lineart_svg", "drawable_elements"]

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
ET.register_namespace("", SVG_NS)
ET.register_namespace("xlink", XLINK_NS)

#: Elements that never paint by themselves (definitions, paint servers, metadata).
NON_DRAWABLE = {
    "defs", "linearGradient", "radialGradient", "clipPath", "mask", "filter", "symbol", "style",
    "title", "desc", "metadata", "pattern", "marker",
}
#: Containers whose content must keep its colours (it is used as a mask/paint, not painted).
PAINT_CONTAINERS = {"clipPath", "mask", "pattern", "marker", "linearGradient", "radialGradient", "filter", "symbol"}
SHAPES = {"path", "circle", "ellipse", "rect", "polygon", "polyline", "line"}


@dataclass(frozen=True)
class IconGeometry:
    """The user-space box of an icon: ``left, top, width, height`` (Iconify defaults 0, 0, w, h)."""

    width: float
    height: float
    left: float = 0.0
    top: float = 0.0

    def square_viewbox(self, margin: float) -> tuple[float, float, float, float]:
        """A square view box centred on the icon, padded by ``margin`` × its larger side."""
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"icon box must be positive, got {self.width}x{self.height}")
        side = max(self.width, self.height)
        pad = margin * side
        full = side + 2 * pad
        x0 = self.left + self.width / 2 - full / 2
        y0 = self.top + self.height / 2 - full / 2
        return (x0, y0, full, full)


def _tag(el: ET.Element) -> str:
    return el.tag.rsplit("}", 1)[-1]


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def _wrap(body: str, geom: IconGeometry, size: int, margin: float) -> str:
    x0, y0, w, h = geom.square_viewbox(margin)
    return (
        f'<svg xmlns="{SVG_NS}" xmlns:xlink="{XLINK_NS}" width="{size}" height="{size}" '
        f'viewBox="{_fmt(x0)} {_fmt(y0)} {_fmt(w)} {_fmt(h)}">{body}</svg>'
    )


def picture_svg(body: str, geom: IconGeometry, size: int, margin: float = 0.04) -> str:
    """The full SVG for the picture: square ``size`` px canvas, icon centred with a margin."""
    return _wrap(body, geom, size, margin)


def _parse(svg: str) -> ET.Element:
    try:
        return ET.fromstring(svg)
    except ET.ParseError as err:  # pragma: no cover - sources are validated at pack time
        raise ValueError(f"invalid SVG markup ({err}); check the source icon body") from err


def _drawable_parent(root: ET.Element) -> ET.Element:
    """Descend through lone wrapper groups (``<svg><g><g><path/>…</g></g></svg>``) to the real layer list."""
    node = root
    while True:
        kids = [c for c in node if _tag(c) not in NON_DRAWABLE]
        if len(kids) == 1 and _tag(kids[0]) == "g" and len(list(kids[0])) >= 1:
            node = kids[0]
            continue
        return node


def drawable_elements(svg: str) -> int:
    """Number of drawable layer elements of a complete SVG string (after lone-group descent)."""
    root = _parse(svg)
    return len([c for c in _drawable_parent(root) if _tag(c) not in NON_DRAWABLE])


def subset_svg(svg: str, keep) -> str:
    """The SVG drawing only the drawable elements whose indices are in ``keep`` (drawing order kept).

    Elements left out that carry an ``id`` are moved into ``<defs>`` (still referable by ``<use>``),
    so the kept ones render exactly as they do inside the full picture.
    """
    keep = set(keep)
    doc = _parse(svg)
    par = _drawable_parent(doc)
    kids = [c for c in par if _tag(c) not in NON_DRAWABLE]
    stash = []
    for i, el in enumerate(kids):
        if i not in keep:
            par.remove(el)
            if any("id" in e.attrib for e in el.iter()):
                stash.append(el)
    if stash:
        defs = ET.SubElement(doc, f"{{{SVG_NS}}}defs")
        defs.extend(stash)
    return ET.tostring(doc, encoding="unicode")


def layer_svgs(svg: str, max_layers: int) -> list[str]:
    """Split a complete SVG into ≤ ``max_layers`` SVGs, each drawing one group of consecutive elements.

    Element ``i`` of ``n`` goes to group ``floor(i·L/n)``, ``L = min(n, max_layers)``, so the groups
    keep drawing order; each group is drawn by :func:`subset_svg`.
    """
    if max_layers < 1:
        raise ValueError(f"max_layers must be >= 1, got {max_layers}")
    n = drawable_elements(svg)
    if n == 0:
        return []
    n_groups = min(n, max_layers)
    group_of = [i * n_groups // n for i in range(n)]
    return [subset_svg(svg, [i for i in range(n) if group_of[i] == g]) for g in range(n_groups)]


_STYLE_DROP = re.compile(r"^(fill|stroke|stroke-width|opacity|fill-opacity|stroke-opacity|filter)$")


def _split_style(style: str) -> dict[str, str]:
    out = {}
    for item in style.split(";"):
        if ":" in item:
            k, v = item.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def _get(el: ET.Element, style: dict[str, str], name: str) -> str | None:
    return style.get(name, el.attrib.get(name))


def _opacity(val: str | None) -> float:
    if val is None:
        return 1.0
    try:
        v = val.strip()
        return float(v[:-1]) / 100 if v.endswith("%") else float(v)
    except ValueError:
        return 1.0


def _width(val: str | None) -> float:
    try:
        return float(str(val).strip().removesuffix("px"))
    except ValueError:
        return 1.0


def lineart_svg(svg: str, line_px: float, size: int, min_opacity: float = 0.5, wide: float = 2.5) -> str:
    """Exact line art of a complete SVG: fills → white, outlines → black (thesis 4.2.4, "LineArt").

    Every painted shape keeps its geometry and drawing order; a filled shape is painted white and
    stroked black ``line_px`` wide (in output pixels, converted to user units of the root view box),
    an existing stroke is painted black at its own width, and a stroke wider than ``wide`` lines
    (a painted band such as a limb) is drawn as its two outlines (black band, white core). Shapes
    fainter than ``min_opacity`` (highlights, shadows, gradients fading to transparent — their least
    stop opacity counts) are dropped, filters removed. Rendered on white, the result shows the
    visible outlines only: later shapes cover the outlines of earlier ones.
    """
    root = _parse(svg)
    vb = [float(v) for v in root.attrib["viewBox"].replace(",", " ").split()]
    unit = line_px * vb[2] / size
    by_id = {el.attrib["id"]: el for el in root.iter() if "id" in el.attrib}

    def paint_opacity(paint: str, depth: int = 0) -> float:
        """Least opacity of a gradient paint (a fade-to-transparent overlay is not a shape)."""
        m = re.match(r"url\(#([^)]+)\)", paint.strip())
        if not m or m.group(1) not in by_id or depth > 4:
            return 1.0
        grad = by_id[m.group(1)]
        stops = [c for c in grad if _tag(c) == "stop"]
        if not stops:
            href = grad.attrib.get(f"{{{XLINK_NS}}}href") or grad.attrib.get("href") or ""
            return paint_opacity(f"url({href})", depth + 1) if href.startswith("#") else 1.0
        return min(_opacity(_get(st, _split_style(st.attrib.get("style", "")), "stop-opacity")) for st in stops)

    wide_strokes: list[tuple[ET.Element, float]] = []

    def walk(el: ET.Element, fill: str, stroke: str, width: str, opacity: float, in_paint: bool) -> None:
        tag = _tag(el)
        style = _split_style(el.attrib.get("style", ""))
        f = _get(el, style, "fill") or fill
        s = _get(el, style, "stroke") or stroke
        w = _get(el, style, "stroke-width") or width
        op = opacity * _opacity(_get(el, style, "opacity"))
        inside = in_paint or tag in PAINT_CONTAINERS
        if not inside:
            if style:
                kept = {k: v for k, v in style.items() if not _STYLE_DROP.match(k)}
                el.attrib["style"] = ";".join(f"{k}:{v}" for k, v in kept.items())
            el.attrib.pop("filter", None)
            if tag in SHAPES or tag == "use":
                fop = op * _opacity(_get(el, style, "fill-opacity")) * paint_opacity(f)
                sop = op * _opacity(_get(el, style, "stroke-opacity")) * paint_opacity(s)
                has_fill = f != "none" and fop >= min_opacity
                has_stroke = s != "none" and sop >= min_opacity
                for k in ("opacity", "fill-opacity", "stroke-opacity"):
                    el.attrib.pop(k, None)
                if tag == "use":
                    pass  # the referenced shape is transformed where it is defined
                elif not has_fill and not has_stroke:
                    el.attrib["display"] = "none"
                else:
                    el.attrib["fill"] = "#ffffff" if has_fill else "none"
                    el.attrib["stroke"] = "#000000"
                    el.attrib["stroke-opacity"] = "1"
                    if not has_stroke:
                        el.attrib["stroke-width"] = _fmt(unit)
                    elif _width(_get(el, style, "stroke-width") or width) > wide * unit:
                        wide_strokes.append((el, _width(_get(el, style, "stroke-width") or width)))
            elif tag == "g":
                el.attrib.pop("opacity", None)
        for child in el:
            walk(child, f, s, w, op if not inside else opacity, inside)

    for child in root:
        walk(child, "#000000", "none", "1", 1.0, False)
    # a wide stroke is a painted band: outline it (black band, white core one line narrower each side)
    parents = {c: p for p in root.iter() for c in p}
    for el, sw in wide_strokes:
        core = copy.deepcopy(el)
        core.attrib.pop("id", None)
        core.attrib["stroke"] = "#ffffff"
        core.attrib["stroke-width"] = _fmt(max(sw - 2 * unit, unit))
        el.attrib["stroke-width"] = _fmt(sw)
        par = parents[el]
        par.insert(list(par).index(el) + 1, core)
    return ET.tostring(root, encoding="unicode")
