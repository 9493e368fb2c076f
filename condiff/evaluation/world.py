"""The built-in world as in-memory tensors for training and evaluation.

Reads a world folder written by :func:`condiff.data.builder.build_world` (``manifest.json`` +
``shard-*.npz`` arrays + ``shard-*.json`` record metadata) into one :class:`WorldTensors`, and
splits it deterministically into training and evaluation records: a record is held out for
evaluation when a hash of its id falls in the bottom ``eval_fraction`` (so its concept is usually
still seen in other styles, but never this picture).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..data.shards import read_npz

__all__ = ["WorldTensors", "load_world"]


@dataclass
class WorldTensors:
    images: Tensor  # uint8 [N, 3, H, W]
    regions: Tensor  # uint8 [N, H, W], 0 = background, k = layer group
    lineart: Tensor  # uint8 [N, H, W]
    depth: Tensor  # uint8 [N, H, W]
    keypoints: Tensor  # float32 [N, 18, 3]
    has_pose: Tensor  # bool [N]
    captions: list[list[str]]
    ids: list[str]
    concept_names: list[str]  # per record
    concept_id: Tensor  # long [N]
    style_id: Tensor  # long [N]
    category_id: Tensor  # long [N]
    flippable: Tensor  # bool [N]
    is_eval: Tensor  # bool [N]
    styles: list[str] = field(default_factory=list)
    concepts: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, mask: Tensor) -> "WorldTensors":
        idx = mask.nonzero().squeeze(1)
        pick = idx.tolist()
        return WorldTensors(
            self.images[idx], self.regions[idx], self.lineart[idx], self.depth[idx], self.keypoints[idx],
            self.has_pose[idx], [self.captions[i] for i in pick], [self.ids[i] for i in pick],
            [self.concept_names[i] for i in pick], self.concept_id[idx], self.style_id[idx], self.category_id[idx],
            self.flippable[idx], self.is_eval[idx], self.styles, self.concepts, self.categories, self.manifest,
        )

    @property
    def train(self) -> "WorldTensors":
        return self.subset(~self.is_eval)

    @property
    def eval(self) -> "WorldTensors":
        return self.subset(self.is_eval)

    def concept_prompt(self, concept: str) -> str:
        """The plain prompt of a concept, used for zero-shot retrieval ("a cat face")."""
        from ..data.captions import humanize

        return f"a {humanize(concept)}"


def _is_eval(record_id: str, fraction: float) -> bool:
    h = int(hashlib.sha256(record_id.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def load_world(folder: str | Path, eval_fraction: float = 0.1) -> WorldTensors:
    folder = Path(folder)
    mpath = folder / "manifest.json"
    if not mpath.exists():
        raise FileNotFoundError(f"{folder} holds no world (no manifest.json); build it with `condiff data build`")
    manifest = json.loads(mpath.read_text())
    arrays: dict[str, list[np.ndarray]] = {}
    meta: list[dict] = []
    for shard in manifest["shards"]:
        data = read_npz(folder / shard["file"])
        for k, v in data.items():
            arrays.setdefault(k, []).append(v)
        meta.extend(json.loads((folder / shard["index"]).read_text()))
    cat = {k: np.concatenate(v) for k, v in arrays.items()}
    styles = sorted({m["style"] for m in meta})
    concepts = sorted({m["concept"] for m in meta})
    categories = sorted({m["category"] for m in meta})
    s_idx = {s: i for i, s in enumerate(styles)}
    c_idx = {c: i for i, c in enumerate(concepts)}
    k_idx = {c: i for i, c in enumerate(categories)}
    return WorldTensors(
        images=torch.from_numpy(cat["image"]).permute(0, 3, 1, 2).contiguous(),
        regions=torch.from_numpy(cat["regions"]),
        lineart=torch.from_numpy(cat["lineart"]),
        depth=torch.from_numpy(cat["depth"]),
        keypoints=torch.from_numpy(cat["keypoints"]).float(),
        has_pose=torch.from_numpy(cat["has_pose"]).bool(),
        captions=[list(m["captions"]) for m in meta],
        ids=[m["id"] for m in meta],
        concept_names=[m["concept"] for m in meta],
        concept_id=torch.tensor([c_idx[m["concept"]] for m in meta]),
        style_id=torch.tensor([s_idx[m["style"]] for m in meta]),
        category_id=torch.tensor([k_idx[m["category"]] for m in meta]),
        flippable=torch.tensor([bool(m["flippable"]) for m in meta]),
        is_eval=torch.tensor([_is_eval(m["id"], eval_fraction) for m in meta]),
        styles=styles, concepts=concepts, categories=categories, manifest=manifest,
    )
