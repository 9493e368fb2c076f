"""Captions for LoRA training (thesis §4.4.3: BLIP captions with the trigger "sks" added).

No captioning network exists offline here, so a caption comes from, in this order:

1. captions the user gives (a list, or a mapping file name -> caption);
2. caption files beside the images: ``photo.png`` + ``photo.txt`` (kohya / A1111 convention) or a
   ``metadata.jsonl`` with ``{"file_name": ..., "text": ...}`` lines (diffusers ImageFolder);
3. the nearest concepts of an image–text embedding model passed in as two callables
   (``embed_images(images [N,3,H,W] in [-1,1]) -> [N, D]``, ``embed_texts(list[str]) -> [M, D]``):
   cosine similarity between each image and each concept name, top-k joined into a caption;
4. a default caption (e.g. "a photo of a woman").

Finally the trigger word is added to every caption (prefix "sks, …" by default, as kohya users do).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["read_caption_files", "nearest_concepts", "with_trigger", "build_captions"]

ImageEmbedder = Callable[[Tensor], Tensor]
TextEmbedder = Callable[[Sequence[str]], Tensor]


def read_caption_files(paths: Sequence[Path]) -> list[str | None]:
    """Sidecar ``.txt`` captions, else ``metadata.jsonl`` entries of the images' folder, else None."""
    paths = [Path(p) for p in paths]
    jsonl: dict[str, str] = {}
    for folder in {p.parent for p in paths}:
        meta = folder / "metadata.jsonl"
        if meta.is_file():
            for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    jsonl[str(folder / rec["file_name"])] = str(rec["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise ValueError(f"{meta} line {n} is not {{'file_name': ..., 'text': ...}} ({err})") from None
    out: list[str | None] = []
    for p in paths:
        side = p.with_suffix(".txt")
        if side.is_file():
            out.append(side.read_text(encoding="utf-8").strip() or None)
        else:
            out.append(jsonl.get(str(p)))
    return out


@torch.no_grad()
def nearest_concepts(images: Tensor, concepts: Sequence[str], embed_images: ImageEmbedder, embed_texts: TextEmbedder,
                     top_k: int = 1) -> list[list[tuple[str, float]]]:
    """For each image the ``top_k`` concepts by cosine similarity of the embeddings, with the scores."""
    if not concepts:
        raise ValueError("nearest-concept captions need a non-empty list of concept names")
    if not 1 <= top_k <= len(concepts):
        raise ValueError(f"top_k must lie in 1..{len(concepts)}, got {top_k}")
    img = torch.nn.functional.normalize(torch.as_tensor(embed_images(images)).float(), dim=-1)
    txt = torch.nn.functional.normalize(torch.as_tensor(embed_texts(list(concepts))).float(), dim=-1)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1] or img.shape[0] != len(images):
        raise ValueError(f"embedders returned shapes {tuple(img.shape)} (images) and {tuple(txt.shape)} (texts); "
                         f"expected [{len(images)}, D] and [{len(concepts)}, D]")
    sims = img @ txt.T
    scores, idx = sims.topk(top_k, dim=1)
    return [[(concepts[int(i)], float(s)) for s, i in zip(srow, irow)] for srow, irow in zip(scores, idx)]


def with_trigger(caption: str, trigger: str | None, position: str = "prefix") -> str:
    """Add the trigger word to a caption unless it is already there."""
    if not trigger or trigger in caption.split():
        return caption
    if position == "prefix":
        return f"{trigger}, {caption}" if caption else trigger
    if position == "suffix":
        return f"{caption}, {trigger}" if caption else trigger
    raise ValueError(f"trigger position must be 'prefix' or 'suffix', got {position!r}")


def build_captions(
    paths: Sequence[Path],
    trigger: str | None,
    *,
    captions: Sequence[str] | Mapping[str, str] | None = None,
    images: Tensor | None = None,
    concepts: Sequence[str] | None = None,
    embed_images: ImageEmbedder | None = None,
    embed_texts: TextEmbedder | None = None,
    top_k: int = 1,
    concept_template: str = "a picture of {}",
    default: str | None = None,
    position: str = "prefix",
) -> list[str]:
    """One caption per image (see the module docstring for the order of sources), trigger added."""
    paths = [Path(p) for p in paths]
    n = len(paths)
    if isinstance(captions, Mapping):
        given: list[str | None] = [captions.get(p.name, captions.get(str(p))) for p in paths]
    elif captions is not None:
        if len(captions) != n:
            raise ValueError(f"got {len(captions)} captions for {n} images")
        given = list(captions)
    else:
        given = [None] * n
    files = read_caption_files(paths)
    result: list[str | None] = [g if g else f for g, f in zip(given, files)]
    missing = [i for i, c in enumerate(result) if not c]
    if missing and concepts and embed_images is not None and embed_texts is not None:
        if images is None or len(images) != n:
            raise ValueError("nearest-concept captions need the images tensor (one row per path)")
        sel = torch.tensor(missing)
        for i, near in zip(missing, nearest_concepts(images[sel], concepts, embed_images, embed_texts, top_k)):
            result[i] = concept_template.format(" and ".join(c for c, _ in near))
    for i, c in enumerate(result):
        if not c:
            if default is None:
                raise ValueError(
                    f"no caption for {paths[i].name}: give captions, put {paths[i].with_suffix('.txt').name} beside "
                    "it, pass an image-text embedder with concept names, or set a default caption"
                )
            result[i] = default
    return [with_trigger(c, trigger, position) for c in result]  # type: ignore[arg-type]
