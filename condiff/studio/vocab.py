"""The built-in world's vocabulary as prompt suggestions: what the built-in model can draw.

The built-in models were trained on captioned clip art and emoji (DESIGN.md §5); the concept
names are those the built-in evaluation encoder knows (``condiff/weights/evalenc/config.json``,
CLDR-style slugs turned into words by :func:`condiff.data.captions.humanize`) and the styles are
the caption vocabulary of :data:`condiff.data.captions.STYLE_WORDS`. A prompt the model knows
reads ``"<concept>, <style descriptor> style"``, e.g. ``"a cat face, flat style"``.
"""

from __future__ import annotations

import functools
import json

from ..data.captions import STYLE_WORDS, humanize, with_article

__all__ = ["concepts", "styles", "compose_prompt", "example_prompts"]


@functools.lru_cache(maxsize=1)
def concepts() -> tuple[str, ...]:
    """Human-readable concept names of the built-in world, sorted, without duplicates (empty if absent)."""
    from ..models.registry import component_dir

    folder = component_dir("evalenc")
    try:
        vocab = json.loads((folder / "config.json").read_text()).get("vocabulary") or {}
        slugs = (folder / vocab.get("file", "concepts.txt")).read_text(encoding="utf-8").split()
    except (OSError, ValueError):
        return ()
    return tuple(sorted({humanize(s) for s in slugs}))


def styles() -> tuple[str, ...]:
    """Style descriptors usable as ``"<descriptor> style"`` (one list over every built-in style)."""
    seen: dict[str, None] = {}
    for _, descriptors, _ in STYLE_WORDS.values():
        for d in descriptors:
            seen.setdefault(d, None)
    return tuple(seen)


def compose_prompt(concept: str | None, style: str | None, current: str = "") -> str:
    """``"a <concept>, <style> style"``; with neither, ``current`` unchanged; with one, that part alone."""
    concept = (concept or "").strip()
    style = (style or "").strip()
    if not concept and not style:
        return current
    head = with_article(concept) if concept else current.split(",")[0].strip()
    return f"{head}, {style} style" if style else head


def example_prompts() -> list[str]:
    """A few prompts in the captions' own wording (shown under the prompt box)."""
    return ["a cat face, flat style", "a red apple, glossy style", "a rocket, outlined style",
            "a person waving, cartoon style", "a smiling face, pastel flat style", "a house, clip art style"]
