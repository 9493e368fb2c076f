"""Captions of the built-in world: names + categories + style, with paraphrase variety.

A record gets :data:`N_CAPTIONS` distinct paraphrases drawn (seeded) from templates such as
"a cat face, flat style", "cat face emoji in twemoji style", "an icon of a cat face (animals &
nature), glossy shaded style"; the loader picks one per visit, so the text encoder sees varied
wordings of the same concept and style. Names come from the CLDR-style slugs of the sources
("cat-face" → "cat face"; skin tones become ", medium-dark skin tone").
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["N_CAPTIONS", "STYLE_WORDS", "humanize", "with_article", "icon_captions", "figure_captions", "style_phrase"]

N_CAPTIONS = 3

#: style id → (vendor name, descriptors usable as "<descriptor> style", noun for the kind of picture)
STYLE_WORDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "twemoji": ("twemoji", ("flat", "flat vector", "twemoji", "bold flat"), "emoji"),
    "noto": ("noto", ("glossy", "shaded", "noto", "soft gradient"), "emoji"),
    "openmoji": ("openmoji", ("outlined", "line and colour", "openmoji", "black outline"), "emoji"),
    "fluent-flat": ("fluent", ("pastel flat", "fluent flat", "smooth flat", "minimal flat"), "emoji"),
    "clipart": ("openclipart", ("clip art", "vector clip art", "public-domain clip art", "retro clip art"), "clip art"),
    "figure-flat": ("figure", ("flat", "simple flat", "cartoon", "flat cartoon"), "drawing"),
    "figure-outline": ("figure", ("outlined", "inked cartoon", "outlined cartoon", "black outline"), "drawing"),
}

_ICON_TEMPLATES = (
    "{a_name}, {desc} style",
    "{name} {noun} in {vendor} style",
    "{a_noun} of {a_name}",
    "{a_name} icon, {desc} style",
    "{desc} illustration of {a_name}",
    "{name}, {category}, {vendor} {noun}",
    "{a_name} drawn in {desc} style",
    "{vendor} style {name}",
    "a picture of {a_name}, {desc} style",
    "{a_name} on a white background, {desc} {noun}",
)

_FIGURE_TEMPLATES = (
    "a person {action}, {desc} style",
    "{a_desc} figure of a person {action}",
    "a person in a {shirt} shirt and {trousers} trousers {action}",
    "a {hair}-haired person {action}, {desc} style",
    "a person {action} wearing a {shirt} top, {desc} drawing",
    "a cartoon person {action}, {shirt} shirt, {trousers} trousers, {desc} style",
)

_ACTIONS = {
    "standing": ("standing", "standing still", "standing upright"),
    "arms up": ("raising both arms", "cheering with arms up", "with both arms raised"),
    "waving": ("waving", "waving hello", "waving a hand"),
    "t-pose": ("with arms stretched out", "in a t-pose", "holding arms out sideways"),
    "jumping": ("jumping", "jumping with arms and legs spread", "doing a star jump"),
    "pointing": ("pointing", "pointing sideways", "pointing with one arm"),
    "kicking": ("kicking", "kicking a leg up", "doing a kick"),
    "squatting": ("squatting", "crouching", "doing a squat"),
    "dancing": ("dancing", "dancing freely", "in a dance pose"),
}

_SKIN = re.compile(r"-((?:medium-)?(?:light|dark)|medium)(?:-skin-tone)?$")


def humanize(slug: str) -> str:
    """CLDR-style slug → words: ``"waving-hand-medium-dark-skin-tone"`` → ``"waving hand, medium-dark skin tone"``."""
    tone = ""
    m = _SKIN.search(slug) if ("skin-tone" in slug or slug.endswith(("-light", "-dark", "-medium"))) else None
    if m and m.start() > 0:
        tone = f", {m.group(1)} skin tone"
        slug = slug[: m.start()]
    if slug.startswith("flag-") and len(slug) > 5:
        return "flag of " + slug[5:].replace("-", " ") + tone
    return slug.replace("-", " ") + tone


def with_article(phrase: str) -> str:
    """Prefix "a"/"an" (by the first letter) unless the phrase already starts with an article."""
    if phrase.split(" ", 1)[0] in ("a", "an", "the"):
        return phrase
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def style_phrase(style: str, rng: np.random.Generator) -> tuple[str, str]:
    """(vendor, descriptor) for a style id, the descriptor drawn with ``rng``."""
    if style not in STYLE_WORDS:
        raise ValueError(f"unknown style {style!r}; known: {list(STYLE_WORDS)}")
    vendor, descs, _ = STYLE_WORDS[style]
    return vendor, descs[int(rng.integers(len(descs)))]


def _distinct(make, rng: np.random.Generator, n_templates: int, k: int) -> list[str]:
    picks = rng.permutation(n_templates)[:k]
    return [make(int(i)) for i in picks]


def icon_captions(name: str, category: str, style: str, rng: np.random.Generator, k: int = N_CAPTIONS) -> list[str]:
    """``k`` distinct paraphrases for an icon record (seeded by ``rng``)."""
    words = humanize(name)

    def make(i: int) -> str:
        vendor, desc = style_phrase(style, rng)
        noun = STYLE_WORDS[style][2]
        text = _ICON_TEMPLATES[i].format(name=words, a_name=with_article(words), desc=desc, vendor=vendor, noun=noun,
                                         a_noun=with_article(noun), category=category.lower())
        return text.replace(f"{noun} {noun}", noun)

    return _distinct(make, rng, len(_ICON_TEMPLATES), k)


def figure_captions(facts: dict, style: str, rng: np.random.Generator, k: int = N_CAPTIONS) -> list[str]:
    """``k`` distinct paraphrases for a procedural-figure record (pose family, clothes, hair, style)."""
    def make(i: int) -> str:
        _, desc = style_phrase(style, rng)
        acts = _ACTIONS[facts["family"]]
        return _FIGURE_TEMPLATES[i].format(action=acts[int(rng.integers(len(acts)))], desc=desc, a_desc=with_article(desc),
                                           shirt=facts["shirt"],
                                           trousers=facts["trousers"], hair=facts["hair"])

    return _distinct(make, rng, len(_FIGURE_TEMPLATES), k)
