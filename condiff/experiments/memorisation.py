"""Memorisation check: how close is a picture to its nearest training picture?

Experiments 1 and 2 start from pictures no model was trained on (:mod:`condiff.data.experiment_inputs`);
whether a generated picture merely reproduces a training picture is then a measurable question. The
shipped **training index** (``condiff/data/assets/experiments/training_index.npz``) holds every
training picture of the built-in world that the models saw — the four emoji sets and the procedural
figures, minus the evaluation split (:func:`condiff.data.heldout.is_eval_record`), the held-out
unicorn and the excluded experiment pictures; the clip-art style (12 % of the world, Debian
``openclipart-svg``) is not in it — as a 16×16 RGB thumbnail (area-averaged, uint8) with its record id.

:func:`nearest_training` compares a picture's thumbnail with all of them and reports the nearest
one's id and the **pixel RMSE** between the two thumbnails (0 = the same picture at that scale; RGB
in [0, 1]). The index also stores the same distance for the evaluation-split pictures of the world
(held-out pictures of seen concepts and styles), whose quantiles calibrate it: a generated picture
closer to a training picture than nearly every held-out picture is a near-copy.

``python -m condiff.experiments.memorisation build`` rebuilds the index from the npm sources
(maintainers; it also writes the evaluation split as pictures for :mod:`condiff.experiments.coherence`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

__all__ = ["INDEX_PATH", "THUMB", "TrainingIndex", "load_training_index", "thumbnails", "nearest_training",
           "memorisation_notes",
           "world_specs", "render_picture", "main"]

INDEX_PATH = Path(__file__).resolve().parents[1] / "data" / "assets" / "experiments" / "training_index.npz"
#: Side of the RGB thumbnails compared.
THUMB = 16


@dataclass
class TrainingIndex:
    """Record ids and uint8 thumbnails [N, THUMB, THUMB, 3] of the training pictures, and the nearest-training
    RMSE of each evaluation-split picture (``heldout_rmse``, for calibration)."""

    ids: list[str]
    thumbs: np.ndarray
    heldout_rmse: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def heldout_quantiles(self) -> dict[str, float]:
        """Quantiles (1 %, 5 %, 50 %) of the held-out pictures' distance to their nearest training picture."""
        q = np.quantile(self.heldout_rmse, [0.01, 0.05, 0.5]) if len(self.heldout_rmse) else [np.nan] * 3
        return {"q01": float(q[0]), "q05": float(q[1]), "median": float(q[2]), "n": int(len(self.heldout_rmse))}


@lru_cache(maxsize=2)
def load_training_index(path: str | Path = INDEX_PATH) -> TrainingIndex:
    """The shipped index (ValueError naming the fix when it is missing)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no training index at {p}; rebuild it with `python -m condiff.experiments.memorisation build`")
    with np.load(p, allow_pickle=False) as z:
        return TrainingIndex([str(s) for s in z["ids"]], z["thumbs"], z["heldout_rmse"])


def thumbnails(images: Tensor | np.ndarray) -> np.ndarray:
    """Area-averaged THUMB×THUMB RGB thumbnails [B, THUMB, THUMB, 3] uint8 of images [B, 3, H, W] in [0, 1]
    (a tensor) or [B, H, W, 3] uint8 (an array)."""
    if isinstance(images, Tensor):
        images = (images.detach().float().clamp(0, 1).cpu() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.stack([cv2.resize(np.ascontiguousarray(a), (THUMB, THUMB), interpolation=cv2.INTER_AREA) for a in images])


def _nearest(query: np.ndarray, base: np.ndarray, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(index, RMSE) of the nearest thumbnail of ``base`` for each of ``query`` (both uint8 [*, T, T, 3])."""
    q = query.reshape(len(query), -1).astype(np.float32) / 255
    b = base.reshape(len(base), -1).astype(np.float32) / 255
    d2 = (q * q).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * q @ b.T
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    j = np.argmin(d2, axis=1)
    rmse = np.sqrt(np.maximum(d2[np.arange(len(q)), j], 0) / q.shape[1])
    return j, rmse


def nearest_training(images: Tensor | np.ndarray, index: TrainingIndex | None = None) -> list[dict]:
    """Per picture: the nearest training picture's id and the pixel RMSE of the two 16×16 thumbnails."""
    index = index or load_training_index()
    j, rmse = _nearest(thumbnails(images), index.thumbs)
    return [{"nearest": index.ids[int(k)], "rmse": float(r)} for k, r in zip(j, rmse)]


def memorisation_notes(inputs: dict[str, Tensor], index: TrainingIndex | None = None) -> list[str]:
    """Report notes: how the check works and is calibrated, and each input's own nearest training picture."""
    index = index or load_training_index()
    q = index.heldout_quantiles()
    rows = nearest_training(torch.cat([as_batch(v) for v in inputs.values()]), index)
    return [f"Memorisation check (column train_rmse): RMSE of 16×16 RGB thumbnails (values in [0, 1]) to the nearest "
            f"of the {len(index):,} indexed training pictures (the emoji sets and figures; clip art not indexed). "
            f"Calibration: of the world's {q['n']:,} held-out pictures (unseen pictures of seen concepts), 1 % lie "
            f"within {q['q01']:.3f} of a training picture (mirror images, recoloured twins), 5 % within {q['q05']:.3f}, "
            f"half within {q['median']:.3f}; a generated picture below ≈{q['q05']:.3f} would be a near-copy.",
            "Inputs and their nearest training pictures: " + "; ".join(
                f"{name} → {r['nearest']} at {r['rmse']:.3f}" for name, r in zip(inputs, rows))]


def as_batch(x: Tensor) -> Tensor:
    return x if x.ndim == 4 else x[None]


# --------------------------------------------------------------------------- building (maintainers)


def world_specs(npm_cache: str | Path) -> list[dict]:
    """The world's icon and figure record specs (version 1, seed 0, 128 px), without clip art."""
    from ..data.builder import VERSIONS, record_specs
    from ..data.experiment_inputs import EXCLUDED_FROM_TRAINING
    from ..data.sources import fetch_npm_sets

    sets = fetch_npm_sets(npm_cache)
    return record_specs(sets, seed=0, size=128, n_figures=VERSIONS["1"]["figures"], exclude=EXCLUDED_FROM_TRAINING)


def render_picture(svg: str) -> np.ndarray:
    from ..data.svg_render import composite_on_white, get_backend

    return composite_on_white(get_backend("auto").render(svg))


def _build(npm_cache: str, out: Path, eval_dir: Path, batch: int = 512) -> None:
    from ..data.heldout import is_eval_record
    from ..data.shards import write_json

    specs = world_specs(npm_cache)
    train = [s for s in specs if not is_eval_record(s["id"])]
    held = [s for s in specs if is_eval_record(s["id"])]
    t0 = time.perf_counter()
    thumbs = []
    for i in range(0, len(train), batch):
        thumbs.append(thumbnails(np.stack([render_picture(s["svg"]) for s in train[i:i + batch]])))
        print(f"{min(i + batch, len(train))}/{len(train)} training pictures, {time.perf_counter() - t0:.0f} s", flush=True)
    thumbs = np.concatenate(thumbs)
    pics = np.stack([render_picture(s["svg"]) for s in held])
    _, held_rmse = _nearest(thumbnails(pics), thumbs)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, ids=np.array([s["id"] for s in train]), thumbs=thumbs,
                        heldout_rmse=held_rmse.astype(np.float32))
    eval_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(eval_dir / "heldout_pictures.npz", images=pics, ids=np.array([s["id"] for s in held]))
    write_json(eval_dir / "heldout_pictures.json", [{k: s[k] for k in ("id", "kind", "style", "concept", "category",
                                                                       "captions")} for s in held])
    print(f"index of {len(train)} training pictures -> {out}; {len(held)} held-out pictures -> {eval_dir}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m condiff.experiments.memorisation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="render the training pictures and write the index (npm sources needed)")
    b.add_argument("--npm-cache", required=True, help="folder for `npm pack` of the pinned emoji sets")
    b.add_argument("--out", default=str(INDEX_PATH))
    b.add_argument("--eval-dir", required=True, help="where the held-out (evaluation-split) pictures are written")
    a = p.parse_args(argv)
    _build(a.npm_cache, Path(a.out), Path(a.eval_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
