"""Weight files: sharded safetensors with sha256 checksums, written atomically, verified on load.

A model folder holds ``config.json`` (the network's config plus a ``files`` table
``{filename: sha256}``) and one or more ``*.safetensors`` shards, each ≤ ``max_shard_bytes``
(16 MiB by default, the limit of the GPU machine's return channel and of DESIGN.md §7).
Loading checks every checksum first, so a corrupted or truncated file gives a clear error
instead of garbage weights. Only safetensors are read here: no pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ModelError
from ..io import atomic_path, sha256_file

__all__ = ["save_weights", "load_weights", "load_state", "load_frozen", "read_config", "sha256_file", "WeightsError",
           "quantize_int8", "dequantize_int8"]

MAX_SHARD_BYTES = 15 * 1024 * 1024
SCALE_SUFFIX = ".__int8_scale__"


def quantize_int8(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Symmetric per-output-channel int8: w ≈ q · s with q ∈ [−127, 127], s = max|w_row| / 127.

    Matrices and convolution kernels (ndim ≥ 2) are quantized, their fp16 scales stored under
    ``key + SCALE_SUFFIX`` and used for quantizing too, so dequantization inverts it up to the rounding
    (≤ s/2 per weight, ≤ 1/254 of the row's largest magnitude up to fp16's rounding of s); vectors
    (biases, norms) stay fp16.
    """
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if v.is_floating_point() and v.ndim >= 2:
            w = v.detach().float()
            # the scale is stored in fp16: quantize against the stored value (exact inverse), and keep it
            # clear of fp16's underflow
            scale = (w.flatten(1).abs().amax(1) / 127).clamp(min=2.0 ** -24).half().float()
            q = torch.round(w / scale.view(-1, *([1] * (w.ndim - 1)))).clamp(-127, 127).to(torch.int8)
            out[k] = q
            out[k + SCALE_SUFFIX] = scale.half()
        else:
            out[k] = v.detach().half() if v.is_floating_point() else v.detach()
    return out


def dequantize_int8(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`quantize_int8` (fp32 out); a state without scales is returned as is."""
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if k.endswith(SCALE_SUFFIX):
            continue
        scale = state.get(k + SCALE_SUFFIX)
        if scale is not None:
            out[k] = v.float() * scale.float().view(-1, *([1] * (v.ndim - 1)))
        else:
            out[k] = v
    return out


class WeightsError(ModelError):
    """A weight folder is missing, corrupted or does not fit the network."""


def _shard(state: dict[str, Tensor], max_bytes: int) -> list[dict[str, Tensor]]:
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key in sorted(state):
        t = state[key]
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += n
    return shards


def save_weights(
    state: dict[str, Tensor],
    folder: str | Path,
    config: dict[str, Any],
    *,
    dtype: torch.dtype | None = torch.float16,
    prefix: str = "model",
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> dict[str, str]:
    """Write ``state`` as checksummed safetensors shards plus ``config.json``; returns {file: sha256}."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if dtype == torch.int8:
        cast = {k: v.contiguous().cpu() for k, v in quantize_int8(state).items()}
    else:
        cast = {
            k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).contiguous().cpu()
            for k, v in state.items()
        }
    shards = _shard(cast, max_shard_bytes)
    files: dict[str, str] = {}
    for i, shard in enumerate(shards):
        name = f"{prefix}.safetensors" if len(shards) == 1 else f"{prefix}-{i + 1:02d}-of-{len(shards):02d}.safetensors"
        with atomic_path(folder / name) as tmp:
            save_file(shard, str(tmp))
        files[name] = sha256_file(folder / name)
    meta = dict(config)
    meta["files"] = files
    with atomic_path(folder / "config.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return files


def read_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise WeightsError(f"no config.json in {folder}: not a condiff model folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path} is not valid JSON ({err}); the model folder is corrupted") from err


def load_weights(folder: str | Path, *, verify: bool = True, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read all shards listed in config.json, verifying each sha256 first."""
    from safetensors.torch import load_file

    folder = Path(folder)
    files = read_config(folder).get("files")
    if not files:
        raise WeightsError(f"{folder}/config.json lists no weight files")
    state: dict[str, Tensor] = {}
    for name, digest in files.items():
        path = folder / name
        if not path.exists():
            raise WeightsError(f"weight file {path} is missing; reinstall condiff or re-run the training recipe")
        if verify and sha256_file(path) != digest:
            raise WeightsError(
                f"checksum mismatch for {path}: the file is corrupted or was replaced "
                f"(expected sha256 {digest[:12]}…); reinstall condiff or re-run the training recipe"
            )
        try:
            state.update(load_file(str(path), device=str(device)))
        except Exception as err:  # safetensors raises its own error types
            raise WeightsError(f"cannot read {path} as safetensors: {err}") from err
    return dequantize_int8(state)


def load_state(folder: str | Path, *, verify: bool = True) -> dict[str, Tensor]:
    """The fp32 state dict of a component folder, whatever it ships as: fp16/fp32 shards are upcast,
    int8 shards with per-channel scales dequantized (:func:`dequantize_int8`); checksums verified."""
    state = load_weights(folder, verify=verify)  # already dequantized
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_frozen(net: nn.Module, folder: str | Path, *, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, what: str = "network") -> nn.Module:
    """Fill ``net`` (built from the folder's config.json) with the folder's verified weights, strictly,
    and return it on ``device``/``dtype`` in eval mode without gradients.

    A state dict that does not fit raises a :class:`WeightsError` naming the folder and ``what``.
    """
    try:
        net.load_state_dict(load_state(folder), strict=True)
    except RuntimeError as err:
        raise WeightsError(f"weights in {folder} do not fit the {what} of its config.json: {err}") from err
    return net.to(device=device, dtype=dtype).eval().requires_grad_(False)
