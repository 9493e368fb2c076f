"""Personalization results in the studio: the library folder and applying them for one job.

The Personalize tab writes what it trains into a library folder (default
``$CONDIFF_CACHE/studio`` or ``~/.cache/condiff/studio``)::

    lora/NAME.safetensors          LoRA adapters (condiff personalize lora)
    embeddings/NAME.safetensors    textual-inversion embeddings (A1111 layout)
    dreambooth/NAME.safetensors    fine-tuned U-Net weights (condiff personalize dreambooth)

Files copied there by hand (any LoRA or embedding condiff reads) appear in the pickers too.

The server holds one model for every request, so a personalization must not outlive its job:
:func:`personalized` gives the job a shallow copy of the model with its own copy of the text
encoder (new tokens and text-encoder LoRAs stay there), attaches LoRAs with
:func:`condiff.personalize.apply_lora` and detaches them afterwards, and loads DreamBooth weights
into a private copy of the U-Net. The shared model is unchanged when the job ends.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import InputError

__all__ = ["KINDS", "Library", "default_library_dir", "personalized"]

KINDS = ("lora", "embeddings", "dreambooth")
_SUFFIXES = (".safetensors", ".pt", ".bin")


def default_library_dir() -> Path:
    """``$CONDIFF_CACHE/studio`` (default ``~/.cache/condiff/studio``)."""
    return Path(os.environ.get("CONDIFF_CACHE", Path.home() / ".cache" / "condiff")).expanduser() / "studio"


class Library:
    """The library folder: one sub-folder per kind of personalization result."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_library_dir()

    def folder(self, kind: str) -> Path:
        if kind not in KINDS:
            raise InputError(f"unknown personalization kind {kind!r}; choose one of {', '.join(KINDS)}")
        path = self.root / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    def names(self, kind: str) -> list[str]:
        """File names of one kind, newest first (what the pickers list)."""
        folder = self.root / kind
        if not folder.is_dir():
            return []
        files = [p for p in folder.iterdir() if p.is_file() and p.suffix in _SUFFIXES]
        return [p.name for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)]

    def path(self, kind: str, name: str) -> Path:
        """The file ``name`` of ``kind``; a bare name only (no folders), and it must exist."""
        if not name or Path(name).name != name or name.startswith("."):
            raise InputError(f"{name!r} is not a file name of the {kind} library; pick one from the list")
        path = self.root / kind / name
        if not path.is_file():
            raise InputError(f"{kind} file {name!r} is not in the library {self.root}; pick one from the list")
        return path


@contextlib.contextmanager
def personalized(model: Any, loras: Sequence[tuple[Path, float]] = (), embeddings: Sequence[Path] = (),
                 finetuned: Path | None = None) -> Iterator[tuple[Any, dict]]:
    """``(model view, record)`` with the LoRAs, embeddings and DreamBooth weights applied for one job.

    Without any of them the model itself is yielded. The record is what ``condiff generate`` stores
    in its PNGs (``loras``, ``embeddings``) plus ``finetuned`` (the DreamBooth file).
    """
    if not loras and not embeddings and finetuned is None:
        yield model, {}
        return
    from ..personalize import apply_lora, load_embedding_into_model, load_finetuned_weights

    view = copy.copy(model)
    view.text_encoder = copy.deepcopy(model.text_encoder)  # tokens and text LoRAs stay in this job
    record: dict[str, Any] = {}
    networks = []
    try:
        if finetuned is not None:
            view.unet = copy.deepcopy(model.unet)
            load_finetuned_weights(view, finetuned)
            record["finetuned"] = finetuned.name
        for path, weight in loras:
            networks.append(apply_lora(view, path, weight))
            record.setdefault("loras", []).append({"file": path.name, "weight": weight})
        for path in embeddings:
            emb = load_embedding_into_model(view, path)
            record.setdefault("embeddings", []).append({"file": path.name, "token": emb.token})
        yield view, record
    finally:
        for net in networks:
            net.detach()
