"""The held-out personalisation concept (thesis 4.4: experiment 3) and its leak checks.

DreamBooth, LoRA and textual inversion must teach the built-in model a subject it has never seen.
The subject is the **unicorn**: every source icon whose name contains "unicorn" is removed from the
pack and from every build (:func:`is_held_out`), so no training image or caption shows it. Its
five reference pictures (four emoji vendors plus one re-posed view) ship as PNG files under
``condiff/data/assets/experiments/exp3``; the class noun is "horse", and pictures of horses from
the training world serve as class images for DreamBooth's prior-preservation loss.

:func:`near_duplicate_check` guards against leaks by look-alikes: it compares the held-out
pictures (and their mirror images) with every training picture, exactly (pixel hash) and by the
cosine similarity of mean-removed 32×32 grey thumbnails.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["HELD_OUT", "HeldOutConcept", "is_held_out", "thumbnail", "near_duplicate_check", "NEAR_DUPLICATE_COSINE",
           "EVAL_FRACTION", "is_eval_record"]


@dataclass(frozen=True)
class HeldOutConcept:
    name: str
    pattern: str
    identifier: str
    class_noun: str
    class_concepts: tuple[str, ...]


HELD_OUT = HeldOutConcept(
    name="unicorn",
    pattern=r"unicorn",
    identifier="sks",
    class_noun="horse",
    class_concepts=("horse-face", "horse"),
)

#: Thumbnail cosine similarity at or above which two pictures count as near-duplicates.
NEAR_DUPLICATE_COSINE = 0.95

_PATTERN = re.compile(HELD_OUT.pattern, re.IGNORECASE)


def is_held_out(text: str) -> bool:
    """True if a source name or caption mentions the held-out concept."""
    return bool(_PATTERN.search(text))


def thumbnail(image: np.ndarray) -> np.ndarray:
    """Mean-removed, unit-norm 32×32 grey thumbnail (float32, 1024 values) for near-duplicate search."""
    gray = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY).astype(np.float32)
    t = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).ravel()
    t -= t.mean()
    n = float(np.linalg.norm(t))
    return t / n if n > 0 else t


def pixel_hash(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def near_duplicate_check(held_out: list[np.ndarray], train_thumbs: np.ndarray, train_hashes: set[str],
                         train_ids: list[str] | None = None) -> dict:
    """Exact and near-duplicate search of the held-out pictures (and mirrors) among training pictures.

    ``train_thumbs`` is an ``N×1024`` stack of :func:`thumbnail` vectors. Returns the number of exact
    matches, the highest cosine similarity (and which training record), the threshold and a verdict.
    """
    exact = 0
    best, best_i = -1.0, -1
    for img in held_out:
        for variant in (img, img[:, ::-1]):
            if pixel_hash(np.ascontiguousarray(variant)) in train_hashes:
                exact += 1
            if len(train_thumbs):
                sims = train_thumbs @ thumbnail(np.ascontiguousarray(variant))
                i = int(np.argmax(sims))
                if sims[i] > best:
                    best, best_i = float(sims[i]), i
    nearest = train_ids[best_i] if (train_ids and best_i >= 0) else None
    return {"exact_matches": exact, "max_cosine": round(best, 4), "nearest": nearest,
            "threshold": NEAR_DUPLICATE_COSINE, "passed": exact == 0 and best < NEAR_DUPLICATE_COSINE}


#: Share of the world's records held out for evaluation (never trained on): see :func:`is_eval_record`.
EVAL_FRACTION = 0.1


def is_eval_record(record_id: str, fraction: float = EVAL_FRACTION) -> bool:
    """True when a world record (``"style/concept"``) belongs to the evaluation split.

    The training recipes hold a record out when the first 32 bits of sha256(id), read as a fraction of
    2³²−1, fall below ``fraction``; every model of condiff was trained on the other records.
    """
    h = int(hashlib.sha256(record_id.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction
