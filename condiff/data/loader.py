"""Training loader of the built-in world: streams shards in a seeded order and yields tensors.

Each sample is a dict::

    image       float32 3×H×W in [-1, 1]
    caption     str — one of the record's paraphrases, or "" with probability ``caption_dropout``
                (the unconditional branch of classifier-free guidance, Ho & Salimans 2022; thesis eq. 3.8)
    caption_raw the chosen paraphrase before dropout
    cond        {name: float32 3×H×W in [0, 1]} for the selected conditions (condiff.data.conditions)
    mask        float32 1×H×W in {0, 1} (inpainting mask, when ``masks=True``), mask_kind str
    object_mask float32 1×H×W in {0, 1} (pixels of the drawn object)
    has_pose    int, id / concept / style / category str, concept_id / style_id int

Order and augmentation are functions of ``(seed, epoch, position)`` only: shards are visited in
a permuted order, records within a shard are permuted, and sample ``i`` of the epoch draws its
caption, flip, crop, dropout and mask from a generator seeded with ``(seed, epoch, i)``. Sample
``i`` goes to consumer ``i mod (world_size·num_workers)``, so DDP ranks and DataLoader workers
split an epoch without overlap and the union does not depend on their number.

Flips: only records marked ``flippable`` (no symbols, flags, arrows, letters, digits, writing);
a flipped figure swaps its left/right keypoints so the OpenPose colours stay anatomical. Crops
(``crop > 0``): a random square of side ≥ (1 − crop)·H, resized back, keypoints moved along.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .conditions import CONDITIONS, check_condition_names, condition_maps
from .masks import sample_inpaint_mask
from .shards import read_json, read_npz, sha256_file

__all__ = ["WorldDataset", "drop_caption", "FLIP_PAIRS", "flip_record", "verify_world"]

#: OpenPose keypoint pairs that swap under a horizontal flip.
FLIP_PAIRS = ((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (14, 15), (16, 17))


def drop_caption(caption: str, rng: np.random.Generator, p: float) -> str:
    """Classifier-free-guidance caption dropout: "" with probability ``p``, else the caption."""
    return "" if rng.random() < p else caption


def flip_record(rec: dict) -> dict:
    """Mirror a record's maps left↔right; keypoints move (x → W − x) and swap sides."""
    out = dict(rec)
    for k in ("image", "lineart", "depth", "regions"):
        out[k] = np.ascontiguousarray(rec[k][:, ::-1])
    kp = np.array(rec["keypoints"], np.float32, copy=True)
    if int(rec["has_pose"]):
        kp[:, 0] = rec["image"].shape[1] - kp[:, 0]
        for a, b in FLIP_PAIRS:
            kp[[a, b]] = kp[[b, a]]
    out["keypoints"] = kp
    return out


def _crop(rec: dict, rng: np.random.Generator, crop: float) -> dict:
    h, w = rec["image"].shape[:2]
    side = int(round(h * rng.uniform(1.0 - crop, 1.0)))
    if side >= h:
        return rec
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    out = dict(rec)
    for k, interp in (("image", cv2.INTER_AREA), ("lineart", cv2.INTER_AREA), ("depth", cv2.INTER_LINEAR),
                      ("regions", cv2.INTER_NEAREST)):
        out[k] = cv2.resize(np.ascontiguousarray(rec[k][y:y + side, x:x + side]), (w, h), interpolation=interp)
    kp = np.array(rec["keypoints"], np.float32, copy=True)
    kp[:, 0] = (kp[:, 0] - x) * w / side
    kp[:, 1] = (kp[:, 1] - y) * h / side
    inside = (kp[:, 0] >= 0) & (kp[:, 0] < w) & (kp[:, 1] >= 0) & (kp[:, 1] < h)
    kp[:, 2] = np.where(inside, kp[:, 2], 0.0)
    out["keypoints"] = kp
    return out


def verify_world(root: str | Path) -> dict:
    """Check every shard and index against the sha256 in ``manifest.json``; returns the manifest."""
    root = Path(root)
    if not (root / "manifest.json").is_file():
        raise FileNotFoundError(f"{root} has no manifest.json; build the world with `condiff data build --out {root}`")
    manifest = read_json(root / "manifest.json")
    for sh in manifest["shards"]:
        for key, sum_key in (("file", "sha256"), ("index", "index_sha256")):
            got = sha256_file(root / sh[key])
            if got != sh[sum_key]:
                raise ValueError(f"{root / sh[key]} fails its checksum ({got} != {sh[sum_key]}); rebuild the world")
    return manifest


class WorldDataset(IterableDataset):
    """Streaming dataset over a built world folder (see the module docstring for the sample layout)."""

    def __init__(self, root: str | Path, *, conditions=CONDITIONS, caption_dropout: float = 0.1,
                 caption_hook: Callable[[str, dict, np.random.Generator], str] | None = None,
                 flip: bool = True, crop: float = 0.0, masks: bool = False, mask_probs: dict | None = None,
                 styles=None, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 verify: bool = False) -> None:
        super().__init__()
        self.root = Path(root)
        self.manifest = verify_world(self.root) if verify else read_json(self.root / "manifest.json")
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {caption_dropout}")
        if not 0.0 <= crop < 1.0:
            raise ValueError(f"crop must be in [0, 1), got {crop}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
        self.conditions = check_condition_names(conditions)
        self.caption_dropout, self.caption_hook = caption_dropout, caption_hook
        self.flip, self.crop, self.masks, self.mask_probs = flip, crop, masks, mask_probs
        self.seed, self.shuffle, self.rank, self.world_size = int(seed), shuffle, rank, world_size
        self.epoch = 0
        self.index = [read_json(self.root / sh["index"]) for sh in self.manifest["shards"]]
        all_styles = sorted(self.manifest["styles"])
        if styles is not None:
            bad = [s for s in styles if s not in all_styles]
            if bad:
                raise ValueError(f"unknown styles {bad}; this world has {all_styles}")
        self.styles = set(styles) if styles is not None else set(all_styles)
        self.style_ids = {s: i for i, s in enumerate(all_styles)}
        self.concepts = sorted({r["concept"] for idx in self.index for r in idx})
        self.concept_ids = {c: i for i, c in enumerate(self.concepts)}

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose seeded order the next iteration follows."""
        self.epoch = int(epoch)

    def _order(self) -> list[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        shard_order = rng.permutation(len(self.index)) if self.shuffle else np.arange(len(self.index))
        out = []
        for s in shard_order:
            recs = [i for i, r in enumerate(self.index[s]) if r["style"] in self.styles]
            if self.shuffle:
                recs = [recs[i] for i in np.random.default_rng([self.seed, self.epoch, 2, int(s)]).permutation(len(recs))]
            out.extend((int(s), i) for i in recs)
        return out

    def __len__(self) -> int:
        n = sum(r["style"] in self.styles for idx in self.index for r in idx)
        return len(range(self.rank, n, self.world_size))

    def __iter__(self):
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        consumers = self.world_size * n_workers
        me = self.rank * n_workers + worker
        order = self._order()
        cached_shard, arrays = -1, None
        for pos in range(me, len(order), consumers):
            s, i = order[pos]
            if s != cached_shard:
                arrays, cached_shard = read_npz(self.root / self.manifest["shards"][s]["file"]), s
            yield self._sample(pos, self.index[s][i], {k: arrays[k][i] for k in arrays})

    def _sample(self, pos: int, meta: dict, rec: dict) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, 3, pos])
        caption = meta["captions"][int(rng.integers(len(meta["captions"])))]
        if self.caption_hook is not None:
            caption = self.caption_hook(caption, meta, rng)
        flipped = bool(self.flip and meta["flippable"] and rng.random() < 0.5)
        if flipped:
            rec = flip_record(rec)
        if self.crop > 0:
            rec = _crop(rec, rng, self.crop)
        sample = {
            "image": torch.from_numpy(rec["image"].astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0),
            "caption": drop_caption(caption, rng, self.caption_dropout),
            "caption_raw": caption,
            "cond": {k: torch.from_numpy(v.astype(np.float32).transpose(2, 0, 1) / 255.0)
                     for k, v in condition_maps(rec, self.conditions).items()},
            "object_mask": torch.from_numpy((rec["regions"] > 0).astype(np.float32)[None]),
            "has_pose": int(rec["has_pose"]), "flipped": flipped,
            "id": meta["id"], "concept": meta["concept"], "style": meta["style"], "category": meta["category"],
            "concept_id": self.concept_ids[meta["concept"]], "style_id": self.style_ids[meta["style"]],
        }
        if self.masks:
            m, kind = sample_inpaint_mask(rng, rec["image"].shape[0], rec["regions"], self.mask_probs)
            sample["mask"] = torch.from_numpy(m.astype(np.float32)[None])
            sample["mask_kind"] = kind
        return sample
