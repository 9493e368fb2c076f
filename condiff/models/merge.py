"""Weighted averages of component folders of one architecture (checkpoint merging, "model soups").

θ = Σᵢ wᵢ θᵢ with wᵢ ≥ 0, Σᵢ wᵢ = 1 — the uniform soup of Wortsman et al. 2022 ("Model soups", eq. 1,
weights 1/k) and the weighted sum of the usual checkpoint mergers. Averaging makes sense for networks
fine-tuned from one starting point (they sit in one basin of the loss); for independently trained
networks it usually does not, which is why the result must be measured before it is used.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from .weights import SCALE_SUFFIX, WeightsError, load_state, read_config, save_weights

__all__ = ["merge_states", "merge_components", "MergeError"]

#: config keys that describe the files or the provenance, not the network: they may differ between sources
_NOT_ARCHITECTURE = {"files", "weights", "merged_from"}
#: network-config keys of training-time behaviour with no parameters: ignored when comparing, 0 in the output
_TRAINING_ONLY = {"dropout"}


def _without_training_only(network, value=None):
    """A network config (nested ones too, e.g. a ControlNet's ``unet``) with the training-only keys removed, or
    set to ``value`` where they were present."""
    if not isinstance(network, dict):
        return network
    out = {}
    for k, v in network.items():
        if k in _TRAINING_ONLY:
            if value is not None:
                out[k] = value
        else:
            out[k] = _without_training_only(v, value)
    return out


def _architecture(config: dict) -> dict:
    arch = {k: v for k, v in config.items() if k not in _NOT_ARCHITECTURE}
    if "network" in arch:
        arch["network"] = _without_training_only(arch["network"])
    return arch


class MergeError(ValueError):
    """The sources cannot be averaged (different architectures, bad weights, an existing output)."""


def _weights(n: int, weights: Sequence[float] | None) -> list[float]:
    if n < 2:
        raise MergeError(f"merging needs at least two sources, got {n}")
    if weights is None:
        return [1.0 / n] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise MergeError(f"got {len(w)} weights for {n} sources; give one weight per source")
    if any(not (x >= 0 and math.isfinite(x)) for x in w) or sum(w) <= 0:
        raise MergeError(f"weights must be finite and non-negative with a positive sum, got {w}")
    total = sum(w)
    return [x / total for x in w]


def merge_states(states: Sequence[dict[str, Tensor]], weights: Sequence[float] | None = None) -> dict[str, Tensor]:
    """Σᵢ wᵢ θᵢ (fp32) over state dicts with the same keys and shapes; ``weights`` default to uniform and are
    normalised to sum 1. Integer tensors (step counters and the like) must agree and are kept."""
    w = _weights(len(states), weights)
    keys = set(states[0])
    for i, s in enumerate(states[1:], 2):
        if set(s) != keys:
            diff = sorted(keys.symmetric_difference(s))[:3]
            raise MergeError(f"source {i} has different parameters from source 1 (e.g. {diff}); only networks "
                             "of one architecture can be averaged")
    out: dict[str, Tensor] = {}
    for k in states[0]:
        shapes = {tuple(s[k].shape) for s in states}
        if len(shapes) != 1:
            raise MergeError(f"parameter {k!r} has different shapes across the sources: {sorted(shapes)}")
        if states[0][k].is_floating_point():
            out[k] = sum(wi * s[k].float() for wi, s in zip(w, states))
        elif all(torch.equal(states[0][k], s[k]) for s in states):
            out[k] = states[0][k]
        else:
            raise MergeError(f"integer buffer {k!r} differs across the sources and cannot be averaged")
    for k, v in out.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise MergeError(f"the average of {k!r} is not finite; a source holds NaN or inf weights")
    return out


def _stored_dtype(folder: Path, config: dict) -> str:
    """How the folder's shards store the weights: "int8" (per-channel scales beside them), "fp32" or "fp16"."""
    from safetensors import safe_open

    floats = set()
    for name in config.get("files", {}):
        with safe_open(str(folder / name), framework="pt") as f:
            for k in f.keys():
                if k.endswith(SCALE_SUFFIX):
                    return "int8"
                floats.add(f.get_slice(k).get_dtype())
    return "fp32" if "F32" in floats else "fp16"


def merge_components(sources: Sequence[str | Path], out: str | Path, weights: Sequence[float] | None = None, *,
                     dtype: str = "same", overwrite: bool = False) -> dict:
    """Average component folders (``config.json`` + safetensors shards, fp16/fp32/int8) into a new folder.

    The sources must share their network config (kind, architecture); ``dtype`` is ``"same"`` (as the first
    source stores its weights: int8, fp32 or fp16), ``"fp16"``, ``"fp32"`` or ``"int8"``. The output folder is
    written next to its final place and renamed into it; an existing one is replaced only with ``overwrite``,
    only if it is a component folder (or a file), and never when a source lies inside it.
    Returns the written config (with ``merged_from``: each source and its weight).
    """
    sources = [Path(s) for s in sources]
    w = _weights(len(sources), weights)
    out = Path(out)
    present = out.exists() or out.is_symlink()
    if present and not overwrite:
        raise MergeError(f"{out} exists; choose another output folder or allow overwriting it")
    target = out.resolve()
    if any(s.resolve() == target or target in s.resolve().parents for s in sources):
        raise MergeError(f"the output {out} is or contains one of the sources; write the merge to a new folder")
    if out.is_dir() and not out.is_symlink() and not (out / "config.json").exists():
        raise MergeError(f"{out} is a folder but not a component folder (no config.json); refusing to replace it")
    configs = []
    for s in sources:
        try:
            configs.append(read_config(s))
        except (OSError, WeightsError, json.JSONDecodeError) as err:
            raise MergeError(f"cannot read the component folder {s}: {err}") from None
    arch = [_architecture(c) for c in configs]
    for s, a in zip(sources[1:], arch[1:]):
        if a != arch[0]:
            keys = sorted(k for k in set(a) | set(arch[0]) if a.get(k) != arch[0].get(k))
            raise MergeError(f"{s} differs from {sources[0]} in {keys}; only components of one architecture "
                             "can be averaged")
    choice = {"fp16": torch.float16, "fp32": torch.float32, "int8": torch.int8}
    if dtype not in (*choice, "same"):
        raise MergeError(f"unknown dtype {dtype!r}; choose same, fp16, fp32 or int8")
    try:
        if dtype == "same":
            dtype = _stored_dtype(sources[0], configs[0])
        states = [load_state(s) for s in sources]
    except (OSError, WeightsError) as err:
        raise MergeError(f"cannot read the weights of a source: {err}") from None
    state = merge_states(states, w)
    config = {k: v for k, v in configs[0].items() if k not in _NOT_ARCHITECTURE}
    if "network" in config:  # the average was trained by none of the sources' runs: no training-time dropout
        config["network"] = _without_training_only(config["network"], 0.0)
    config["merged_from"] = [{"source": str(s), "weight": round(x, 6)} for s, x in zip(sources, w)]
    if dtype == "int8":
        config["weights"] = "int8, one scale per output channel (condiff.models.weights.quantize_int8)"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's private 0700 would outlive the rename
    old = out.with_name(f".{out.name}.replaced-{tmp.name.rsplit('.', 1)[-1]}") if present else None
    try:
        save_weights(state, tmp, config, dtype=choice[dtype])
        if old is not None:
            os.replace(out, old)  # kept until the new folder is in place
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old, out)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None and old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    elif old is not None:
        old.unlink()
    return read_config(out)
