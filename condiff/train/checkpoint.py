"""Atomic training checkpoints that resume bit-exactly.

A checkpoint at step N is three files in the run's ``checkpoints/`` folder:

* ``step_0000000N-model.safetensors``: the trained weights (trainable parameters and buffers);
* ``step_0000000N-ema.safetensors``: the EMA shadow weights (when EMA is on);
* ``step_0000000N-state.pt``: everything else — optimizer, LR schedule, EMA counter, the RNG states
  of torch / CUDA / numpy / python (per rank), the data-order cursor, the step, the run config.
  It holds only tensors and plain Python types and is read back with ``torch.load(weights_only=True)``.

Each file is written through :func:`condiff.io.atomic_path` (temporary file + rename), and
``latest.json`` — the pointer that resuming reads — is rewritten last, so a run killed at any
moment leaves either the previous complete checkpoint or the new complete one, never a partial file.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..io import atomic_path

__all__ = [
    "LATEST",
    "Checkpoint",
    "save_checkpoint",
    "find_latest",
    "load_checkpoint",
    "prune_checkpoints",
    "capture_rng_state",
    "restore_rng_state",
]

LATEST = "latest.json"
_FORMAT = 1


@dataclass
class Checkpoint:
    step: int
    model: dict[str, Tensor]
    ema: dict[str, Tensor] | None
    state: dict
    path: Path  # the step_XXXXXXXX-state.pt file it was read from


def _stem(step: int) -> str:
    return f"step_{step:08d}"


def _cpu_copy(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    # clone breaks shared storage (tied weights), which safetensors refuses to write
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}


def save_checkpoint(
    directory: str | Path,
    step: int,
    model_state: dict[str, Tensor],
    state: dict,
    ema_state: dict[str, Tensor] | None = None,
    keep: int | None = None,
) -> Path:
    """Write the checkpoint of ``step`` into ``directory`` atomically; returns the state file's path.

    ``keep``: how many checkpoints to keep (older ones are deleted after the new one is complete).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = _stem(int(step))
    meta = {"format": str(_FORMAT), "step": str(int(step))}
    files = {"model": f"{stem}-model.safetensors", "state": f"{stem}-state.pt"}
    with atomic_path(directory / files["model"]) as tmp:
        save_file(_cpu_copy(model_state), str(tmp), metadata=meta)
    if ema_state is not None:
        files["ema"] = f"{stem}-ema.safetensors"
        with atomic_path(directory / files["ema"]) as tmp:
            save_file(_cpu_copy(ema_state), str(tmp), metadata=meta)
    with atomic_path(directory / files["state"]) as tmp:
        torch.save({"format": _FORMAT, "step": int(step), **state}, tmp)
    with atomic_path(directory / LATEST) as tmp:
        tmp.write_text(json.dumps({"step": int(step), "files": files}, indent=1))
    if keep is not None:
        prune_checkpoints(directory, keep)
    return directory / files["state"]


def _record(directory: Path) -> dict | None:
    pointer = directory / LATEST
    if not pointer.exists():
        return None
    try:
        record = json.loads(pointer.read_text())
        files = record["files"]
        int(record["step"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{pointer} is not a valid checkpoint pointer ({err}); delete it to start afresh") from err
    for name in files.values():
        if not (directory / name).exists():
            raise FileNotFoundError(f"{pointer} names {name}, which is missing; the checkpoint folder was altered")
    return record


def find_latest(directory: str | Path) -> Path | None:
    """The state file of the newest complete checkpoint in ``directory``, or None."""
    directory = Path(directory)
    record = _record(directory) if directory.is_dir() else None
    return None if record is None else directory / record["files"]["state"]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint given its folder (newest one) or its ``*-state.pt`` file."""
    path = Path(path)
    if path.is_dir():
        found = find_latest(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {path} (no {LATEST})")
        path = found
    if not path.name.endswith("-state.pt") or not path.exists():
        raise FileNotFoundError(f"{path} is not a checkpoint state file (expected step_XXXXXXXX-state.pt)")
    prefix = path.name[: -len("-state.pt")]
    state = torch.load(path, map_location=map_location, weights_only=True)
    model = load_file(str(path.with_name(f"{prefix}-model.safetensors")), device=str(map_location))
    ema_file = path.with_name(f"{prefix}-ema.safetensors")
    ema = load_file(str(ema_file), device=str(map_location)) if ema_file.exists() else None
    return Checkpoint(int(state["step"]), model, ema, state, path)


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints (never the one ``latest.json`` names)."""
    if keep < 1:
        raise ValueError(f"keep must be ≥ 1, got {keep}")
    directory = Path(directory)
    record = _record(directory)
    protected = set() if record is None else set(record["files"].values())
    steps = sorted({p.name.split("-")[0] for p in directory.glob("step_*-state.pt")})
    removed = []
    for stem in steps[:-keep]:
        for p in directory.glob(f"{stem}-*"):
            if p.name not in protected:
                p.unlink()
                removed.append(p)
    return removed


# --------------------------------------------------------------------------------------------
# RNG states as tensors and plain types (so weights_only loading accepts them)


def capture_rng_state() -> dict:
    """The global RNG states of torch, CUDA, numpy and python's ``random``."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    npst = state["numpy"]
    np.random.set_state(
        ("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
