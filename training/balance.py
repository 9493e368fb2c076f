"""Family-balanced sampling of training pictures.

The built-in world is lopsided: the five skin-tone variants of people and gestures make 31 % of its
pictures and nine procedural figure poses another 10 %, while most everyday objects have one picture
per emoji style (3–5 in all). The adherence breakdown by training count
(:func:`condiff.evaluation.adherence.adherence_by_training_count`) finds the model right on the first two
groups and wrong on the last. Sampling picture i with probability ∝ n_f(i)^(−α), where
n_f is the number of training pictures of its concept *family* (the concept with its skin-tone
qualifier removed: both ``artist-medium-dark-skin-tone`` and the short ``artist-medium-dark`` are ``artist``), moves weight from repeated families to rare ones: α = 0 is uniform, α = 1 gives every
family the same share. (The same re-weighting by a power of the frequency as in Mikolov et al. 2013's
sub-sampling of frequent words, applied to concept families.)
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Collection, Sequence

import torch
from torch import Tensor

__all__ = ["concept_family", "family_weights", "WeightedBatches", "SKIN_TONE", "SHORT_TONE"]

#: the CLDR form, possibly twice for couples: ``…-medium-light-skin-tone-dark-skin-tone``
SKIN_TONE = re.compile(r"-(?:light|medium-light|medium|medium-dark|dark)-skin-tone")
#: the short form some icon sets use: ``artist-medium-dark`` (also ``traffic-light``, hence the check below)
SHORT_TONE = re.compile(r"-(?:(?:medium-)?(?:light|dark)|medium)$")


def concept_family(concept: str, known: Collection[str] = ()) -> str:
    """The concept without its skin-tone qualifier: all tones of one gesture are one family.

    The short form (``artist-dark``) is only a tone when the rest is itself a concept in ``known``
    (``artist``); ``traffic-light`` stays as it is.
    """
    base = SKIN_TONE.sub("", concept)
    if base == concept:
        m = SHORT_TONE.search(concept)
        if m and concept[:m.start()] in known:
            base = concept[:m.start()]
    return base


def family_weights(concepts: Sequence[str], alpha: float, known: Collection[str] | None = None) -> Tensor:
    """Per-picture sampling weights n_f^(−α) (float64, summing to 1) for pictures of the given concepts;
    ``known`` (default: ``concepts``) are the names a short skin-tone suffix may reduce to."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"balance exponent must lie in [0, 1] (0 = uniform, 1 = equal share per family), got {alpha}")
    if not concepts:
        raise ValueError("no pictures to weight")
    known = set(concepts if known is None else known)
    fams = [concept_family(c, known) for c in concepts]
    count = Counter(fams)
    w = torch.tensor([count[f] ** -alpha for f in fams], dtype=torch.float64)
    return w / w.sum()


class WeightedBatches:
    """A batch function ``(step, generator) -> batch`` for :class:`condiff.train.loop.Trainer`: each step
    draws ``batch_size`` rows of ``table`` with replacement, with probability ``weights``, from the
    generator the Trainer seeds from the step (so a resumed run and every rank of a data-parallel run
    draw the same rows; each rank then keeps its slice of the global batch).
    """

    def __init__(self, table: dict[str, Tensor], weights: Tensor, batch_size: int):
        n = {len(v) for v in table.values()}
        if len(n) != 1 or n.pop() != len(weights):
            raise ValueError("every column of the table and the weights must have one entry per row")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.table, self.weights, self.batch_size = table, weights.double(), batch_size

    def __call__(self, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        idx = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=generator)
        return {k: v[idx.to(v.device)] for k, v in self.table.items()}
