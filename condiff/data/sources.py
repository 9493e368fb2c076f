"""Sources of the built-in world: emoji icon sets from npm, located or fetched with the npm client.

Each emoji vendor is one *style* of the world. The sets are the per-set Iconify JSON packages
(``@iconify-json/<set>``, much smaller than the full ``@iconify/json``), pinned per data-set
version so a rebuild sees the same icons. Each package carries the set's licence and author
(``info.json``), the icons (``icons.json``: SVG body per name) and the categories
(``metadata.json``). Names are CLDR-style slugs shared by the vendors ("cat-face"), which gives the
same concept in several styles.

``--small`` builds use the few dozen icons vendored under ``condiff/data/assets/small`` (same
format, licences in ``assets/LICENSES.md``), so tests and CI never need npm or apt. The
public-domain clip-art style comes from Debian (:mod:`condiff.data.clipart`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Icon", "IconSet", "NPM_SETS", "STYLE_OF_PREFIX", "fetch_npm_sets", "load_iconify_package",
    "load_small_sets", "iconify_json_to_set", "SMALL_ASSETS", "SMALL_CONCEPTS", "write_small_sets",
]

#: npm package (pinned) per Iconify prefix, for data-set version 1.
NPM_SETS = {
    "twemoji": "@iconify-json/twemoji@1.2.5",
    "noto": "@iconify-json/noto@1.2.9",
    "openmoji": "@iconify-json/openmoji@1.2.29",
    "fluent-emoji-flat": "@iconify-json/fluent-emoji-flat@1.2.6",
}
#: Style id of each set (the "style" axis of the world).
STYLE_OF_PREFIX = {"twemoji": "twemoji", "noto": "noto", "openmoji": "openmoji", "fluent-emoji-flat": "fluent-flat",
                   "openclipart": "clipart"}

SMALL_ASSETS = Path(__file__).parent / "assets" / "small"
#: Concepts vendored for ``--small`` builds (each in all four styles): varied categories, one
#: non-mirrorable arrow, and the held-out concept's class ("horse-face") for the leak check.
SMALL_CONCEPTS = ("grinning-face", "cat-face", "dog-face", "horse-face", "red-apple", "rocket", "sun", "house",
                  "deciduous-tree", "automobile", "fish", "guitar", "left-arrow",
                  # public-domain clip art (openclipart-svg)
                  "rhinoceros", "crow", "happy-monkey", "christmas-tree", "cellular-phone", "sakura", "volley-ball")


@dataclass(frozen=True)
class Icon:
    """One vector icon: slug name, category, Iconify SVG body and its user-space box."""

    name: str
    category: str
    body: str
    width: float
    height: float
    left: float = 0.0
    top: float = 0.0


@dataclass
class IconSet:
    """One vendor's set with its licence facts (copied from the package's ``info.json``)."""

    prefix: str
    title: str
    author: str
    author_url: str
    license_title: str
    license_spdx: str
    license_url: str
    package: str
    icons: list[Icon] = field(default_factory=list)

    @property
    def style(self) -> str:
        return STYLE_OF_PREFIX.get(self.prefix, self.prefix)

    def meta(self) -> dict:
        """Licence and attribution facts (everything but the icons)."""
        return {k: getattr(self, k) for k in
                ("prefix", "title", "author", "author_url", "license_title", "license_spdx", "license_url", "package")}


_CATEGORY_FIX = {"Animals Nature": "Animals & Nature", "Food Drink": "Food & Drink", "People Body": "People & Body",
                 "Smileys Emotion": "Smileys & Emotion", "Travel Places": "Travel & Places",
                 "Extras Openmoji": "Extras", "Extras Unicode": "Extras"}


def iconify_json_to_set(icons: dict, info: dict, metadata: dict, package: str) -> IconSet:
    """Build an :class:`IconSet` from the three Iconify JSON documents; hidden icons are skipped."""
    cat_of: dict[str, str] = {}
    for cat, names in sorted(metadata.get("categories", {}).items()):
        for n in names:
            cat_of.setdefault(n, _CATEGORY_FIX.get(cat, cat))
    dw, dh = float(icons.get("width", 16)), float(icons.get("height", 16))
    out = []
    for name in sorted(icons["icons"]):
        ic = icons["icons"][name]
        if ic.get("hidden"):
            continue
        out.append(Icon(name=name, category=cat_of.get(name, "Other"), body=ic["body"],
                        width=float(ic.get("width", dw)), height=float(ic.get("height", dh)),
                        left=float(ic.get("left", 0.0)), top=float(ic.get("top", 0.0))))
    author = info.get("author", {})
    lic = info.get("license", {})
    return IconSet(prefix=icons["prefix"], title=info.get("name", icons["prefix"]), author=author.get("name", ""),
                   author_url=author.get("url", ""), license_title=lic.get("title", ""), license_spdx=lic.get("spdx", ""),
                   license_url=lic.get("url", ""), package=package, icons=out)


def load_iconify_package(folder: str | Path, package: str = "") -> IconSet:
    """Read an unpacked ``@iconify-json/<set>`` package folder (``icons.json``, ``info.json``, ``metadata.json``)."""
    folder = Path(folder)
    if not (folder / "icons.json").is_file():
        raise FileNotFoundError(f"{folder} has no icons.json; point at an unpacked @iconify-json package folder")
    icons = json.loads((folder / "icons.json").read_text("utf-8"))
    info = json.loads((folder / "info.json").read_text("utf-8")) if (folder / "info.json").is_file() else {}
    meta = json.loads((folder / "metadata.json").read_text("utf-8")) if (folder / "metadata.json").is_file() else {}
    if not package and (folder / "package.json").is_file():
        pj = json.loads((folder / "package.json").read_text("utf-8"))
        package = f"{pj.get('name')}@{pj.get('version')}"
    return iconify_json_to_set(icons, info, meta, package)


def _npm_pack(spec: str, cache: Path) -> Path:
    """``npm pack SPEC`` into ``cache`` (once) and unpack it; returns the package folder."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", spec.lstrip("@"))
    target = cache / slug
    if (target / "package" / "icons.json").is_file():
        return target / "package"
    npm = shutil.which("npm")
    if npm is None:
        raise ValueError("npm is not installed: install Node.js/npm, or build from a pack with --from-pack PACK, "
                         "or use --small")
    cache.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([npm, "pack", spec, "--pack-destination", str(cache), "--silent"],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise ValueError(f"`npm pack {spec}` failed: {res.stderr.strip()[-400:]}")
    tgz = cache / res.stdout.strip().splitlines()[-1]
    tmp = cache / (slug + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(tgz) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("package/")
                   and m.name.endswith(".json") and "/" not in m.name[len("package/"):]]
        tar.extractall(tmp, members=members, filter="data")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    tgz.unlink()
    return target / "package"


def fetch_npm_sets(cache_dir: str | Path, prefixes: list[str] | None = None) -> list[IconSet]:
    """Locate (or fetch with ``npm pack``) the pinned emoji packages and read them."""
    cache = Path(cache_dir).expanduser()
    prefixes = prefixes or list(NPM_SETS)
    unknown = [p for p in prefixes if p not in NPM_SETS]
    if unknown:
        raise ValueError(f"unknown icon sets {unknown}; known: {list(NPM_SETS)}")
    return [load_iconify_package(_npm_pack(NPM_SETS[p], cache), NPM_SETS[p]) for p in prefixes]


def load_small_sets() -> list[IconSet]:
    """The vendored icons for ``--small`` builds (``condiff/data/assets/small/<prefix>.json``)."""
    files = sorted(SMALL_ASSETS.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no vendored icon sets in {SMALL_ASSETS}")
    out = []
    for f in files:
        doc = json.loads(f.read_text("utf-8"))
        out.append(iconify_json_to_set(doc["icons"], doc["info"], doc["metadata"], doc["package"]))
    return out


def write_small_sets(sets: list[IconSet], out_dir: str | Path = SMALL_ASSETS, names=SMALL_CONCEPTS) -> list[Path]:
    """Vendor the ``names`` icons of each set as small Iconify-format JSON files (maintainer tool)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in sets:
        seen: set[str] = set()
        chosen = [i for i in s.icons if i.name in names and not (i.name in seen or seen.add(i.name))]
        icons = {"prefix": s.prefix, "icons": {}}
        cats: dict[str, list[str]] = {}
        for i in chosen:
            entry = {"body": i.body, "width": i.width, "height": i.height}
            if i.left or i.top:
                entry.update(left=i.left, top=i.top)
            icons["icons"][i.name] = entry
            cats.setdefault(i.category, []).append(i.name)
        info = {"name": s.title, "author": {"name": s.author, "url": s.author_url},
                "license": {"title": s.license_title, "spdx": s.license_spdx, "url": s.license_url}}
        doc = {"package": s.package, "info": info, "metadata": {"categories": cats}, "icons": icons}
        path = out_dir / f"{s.prefix}.json"
        path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", "utf-8")
        paths.append(path)
    return paths
