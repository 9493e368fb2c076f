"""Public-domain clip art (Debian ``openclipart-svg``) as the "clipart" style of the built-in world.

The Debian package ships ~8k SVG files of the Open Clip Art Library (2004–2007 snapshot) under
the Creative Commons Public Domain Dedication, in topic folders (animals, food, people, …), each
with a Dublin-Core title in its metadata. This module locates the files (an installed package,
or ``apt-get download`` + ``dpkg-deb -x`` into a cache folder: no root install needed) and turns
the usable ones into :class:`~condiff.data.sources.Icon` entries:

* kept: files ≤ 24 KB, vector only (no embedded rasters), with a real title (not a theme or
  collection label) and not in the icon-theme / star-generator / gradient / card folders;
* cleaned: metadata, editor namespaces (inkscape, sodipodi) and ``<text>`` are removed (text
  needs fonts that differ between machines);
* name = slug of the title, category = topic folder; canvas = ``viewBox`` or width/height in px.

:func:`filter_rendered` (pack time) drops pictures that render empty or fill the whole canvas.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .sources import Icon, IconSet
from .svg_doc import SVG_NS, XLINK_NS, IconGeometry, picture_svg

__all__ = ["CLIPART_PACKAGE", "locate_openclipart", "load_openclipart", "filter_rendered", "CLIPART_CATEGORIES"]

CLIPART_PACKAGE = "openclipart-svg"
_SYSTEM_DIR = Path("/usr/share/openclipart/svg")
_SKIP_DIRS = ("computer/icons", "shapes/stars", "shapes/jigsaw", "special", "recreation/games/cards", "computer/buttons")
_JUNK_TITLE = re.compile(r"(part of|theme|collection|clipart by|gradient|hash|untitled|open clip art|^\W*$|\.svg|^\d+$|"
                         r"icon set|layer|drawing|pattern)", re.IGNORECASE)
CLIPART_CATEGORIES = {
    "animals": "Animals", "buildings": "Buildings", "buttons": "Symbols", "computer": "Computers",
    "containers": "Objects", "decorations": "Decorations", "education": "Education", "electronics": "Electronics",
    "food": "Food & Drink", "geography": "Geography", "logos": "Symbols", "office": "Office", "people": "People",
    "plants": "Plants", "recreation": "Recreation", "science": "Science", "shapes": "Shapes",
    "signs_and_symbols": "Symbols", "tools": "Tools", "transportation": "Transportation", "unsorted": "Other",
}
_UNITS = {"px": 1.0, "": 1.0, "pt": 4 / 3, "pc": 16.0, "mm": 96 / 25.4, "cm": 96 / 2.54, "in": 96.0}
_DROP_TAGS = {"metadata", "namedview", "text", "flowRoot", "script", "foreignObject", "title", "desc", "image"}


def locate_openclipart(cache_dir: str | Path) -> tuple[Path, str]:
    """The folder of the clip-art SVGs and the package version: installed, cached, or fetched with apt."""
    if _SYSTEM_DIR.is_dir():
        ver = subprocess.run(["dpkg-query", "-W", "-f=${Version}", CLIPART_PACKAGE], capture_output=True, text=True)
        return _SYSTEM_DIR, ver.stdout.strip() or "installed"
    cache = Path(cache_dir).expanduser() / CLIPART_PACKAGE
    root = cache / "x" / "usr/share/openclipart/svg"
    if not root.is_dir():
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise ValueError("clip art needs Debian's apt-get and dpkg-deb (openclipart-svg); pass --no-clipart to skip it, "
                             "or build from a pack with --from-pack")
        cache.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["apt-get", "download", CLIPART_PACKAGE], cwd=cache, capture_output=True, text=True)
        debs = sorted(cache.glob(f"{CLIPART_PACKAGE}_*.deb"))
        if res.returncode != 0 or not debs:
            raise ValueError(f"`apt-get download {CLIPART_PACKAGE}` failed ({res.stderr.strip()[-300:]}); run "
                             "`apt-get update` first, or pass --no-clipart")
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(cache / "x")], check=True)
    debs = sorted(cache.glob(f"{CLIPART_PACKAGE}_*.deb"))
    version = debs[-1].name.split("_")[1].replace("%3a", ":") if debs else "unknown"
    return root, version


def _length(val: str | None) -> float | None:
    if not val:
        return None
    m = re.match(r"\s*([0-9.eE+-]+)\s*([a-z%]*)", val)
    if not m or m.group(2) not in _UNITS:
        return None
    try:
        return float(m.group(1)) * _UNITS[m.group(2)]
    except ValueError:
        return None


def _title(text: str) -> str | None:
    m = re.search(r"<dc:title>([^<]*)</dc:title>", text)
    if not m:
        return None
    t = " ".join(m.group(1).split())
    if _JUNK_TITLE.search(t) or len(t) < 3 or len(t) > 60 or not re.search(r"[A-Za-z]{3}", t):
        return None
    return t


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _clean(el: ET.Element) -> None:
    for child in list(el):
        tag = child.tag.rsplit("}", 1)[-1] if isinstance(child.tag, str) else ""
        ns = child.tag[1:].split("}", 1)[0] if isinstance(child.tag, str) and child.tag.startswith("{") else SVG_NS
        if tag in _DROP_TAGS or ns != SVG_NS:
            el.remove(child)
            continue
        _clean(child)
    for key in list(el.attrib):
        if key.startswith("{") and not key.startswith(f"{{{XLINK_NS}}}"):
            del el.attrib[key]


def _body(root: ET.Element) -> str:
    _clean(root)
    parts = [ET.tostring(c, encoding="unicode") for c in root]
    body = "".join(parts)
    return body.replace(f' xmlns="{SVG_NS}"', "").replace(f' xmlns:xlink="{XLINK_NS}"', "")


def load_openclipart(folder: str | Path, version: str = "", max_bytes: int = 24_000) -> IconSet:
    """Read and clean the usable clip art of an ``openclipart-svg`` folder (see the module docstring)."""
    folder = Path(folder)
    icons = []
    for path in sorted(folder.rglob("*.svg")):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(_SKIP_DIRS) or path.stat().st_size > max_bytes:
            continue
        text = path.read_text("utf-8", errors="replace")
        title = _title(text)
        if title is None or "<image" in text:
            continue
        try:
            root = ET.fromstring(text.encode("utf-8"))
        except ET.ParseError:
            continue
        vb = root.attrib.get("viewBox")
        if vb:
            try:
                left, top, w, h = (float(v) for v in vb.replace(",", " ").split())
            except ValueError:
                continue
        else:
            left = top = 0.0
            w, h = _length(root.attrib.get("width")), _length(root.attrib.get("height"))
            if not w or not h:
                continue
        if w <= 0 or h <= 0:
            continue
        body = _body(root)
        if len(body) < 40:
            continue
        icons.append(Icon(name=_slug(title), category=CLIPART_CATEGORIES.get(rel.split("/")[0], "Other"), body=body,
                          width=w, height=h, left=left, top=top))
    return IconSet(prefix="openclipart", title="Open Clip Art Library (Debian openclipart-svg)",
                   author="Open Clip Art Library contributors", author_url="https://openclipart.org",
                   license_title="Public Domain Dedication", license_spdx="CC-PDDC",
                   license_url="https://creativecommons.org/licenses/publicdomain/",
                   package=f"debian:{CLIPART_PACKAGE}={version}", icons=icons)


def filter_rendered(s: IconSet, backend: str = "auto", size: int = 64, lo: float = 0.02, hi: float = 0.97) -> IconSet:
    """Drop clip art whose rendering covers less than ``lo`` or more than ``hi`` of the canvas
    (empty, off-canvas or full-page pictures) or fails to render."""
    from .svg_render import get_backend

    be = get_backend(backend)
    keep = []
    for icon in s.icons:
        try:
            a = be.render(picture_svg(icon.body, IconGeometry(icon.width, icon.height, icon.left, icon.top), size))[..., 3]
        except ValueError:
            continue
        cover = float(np.mean(a >= 128))
        if lo <= cover <= hi:
            keep.append(icon)
    s.icons = keep
    return s
