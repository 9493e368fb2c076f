"""Export trained networks as shipped built-in components (weights + config + model card)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from condiff.io import atomic_path
from condiff.models.weights import WeightsError, read_config, save_weights, sha256_file

__all__ = ["export_component", "write_model_card", "add_card_metrics", "strip_prefix", "snapshot_component",
           "update_component_config", "write_vocabulary", "VOCABULARY_FILE"]

#: the concept vocabulary of a component (one concept name a line), beside its weights; config.json names it
#: with its count and sha256 under ``"vocabulary"``, so the config and the model card stay short
VOCABULARY_FILE = "concepts.txt"


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def export_component(
    net: nn.Module | dict[str, torch.Tensor],
    folder: str | Path,
    *,
    kind: str,
    network_config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
    vocabulary: Sequence[str] | None = None,
) -> dict[str, str]:
    """Write fp16 (or, with ``dtype=torch.int8``, int8 + per-channel scale) shards + config.json
    (+ MODEL_CARD.md when ``card`` is given, + :data:`VOCABULARY_FILE` when ``vocabulary`` is)."""
    state = net if isinstance(net, dict) else net.state_dict()
    config = {"kind": kind, "network": network_config, **(extra or {})}
    if vocabulary is not None:
        config["vocabulary"] = write_vocabulary(folder, vocabulary)
    if dtype == torch.int8:
        config["weights"] = "int8, one scale per output channel (condiff.models.weights.quantize_int8)"
    files = save_weights(state, folder, config, dtype=dtype)
    if card is not None:
        write_model_card(folder, kind, config, files, card)
    return files


def write_vocabulary(folder: str | Path, concepts: Sequence[str]) -> dict[str, Any]:
    """Write ``concepts`` to ``folder/`` :data:`VOCABULARY_FILE` (atomically); returns its config entry
    ``{"file", "concepts", "sha256"}``."""
    names = [str(c) for c in concepts]
    if any("\n" in c for c in names):
        raise ValueError("a concept name contains a line break; the vocabulary file holds one name a line")
    path = Path(folder) / VOCABULARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(names) + "\n")
    return {"file": VOCABULARY_FILE, "concepts": len(names), "sha256": sha256_file(path)}


def write_model_card(folder: str | Path, kind: str, config: dict, files: dict[str, str], card: dict[str, Any]) -> Path:
    """MODEL_CARD.md: recipe, data, steps, wall time, device, metrics, file checksums."""
    folder = Path(folder)
    params = card.get("parameters")
    lines = [
        f"# {card.get('title', folder.name)}",
        "",
        card.get("summary", ""),
        "",
        "| field | value |",
        "|---|---|",
        f"| component | `{folder.name}` ({kind}) |",
    ]
    if params is not None:
        lines.append(f"| parameters | {params:,} |")
    for key in ("recipe", "command", "data", "steps", "batch_size", "wall_time", "device", "trained"):
        if key in card:
            lines.append(f"| {key.replace('_', ' ')} | {card[key]} |")
    lines += ["", "## Metrics", ""]
    metrics = card.get("metrics", {})
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines.append("(none recorded)")
    lines += ["", "## Files", "", "| file | sha256 |", "|---|---|"]
    lines += [f"| `{name}` | `{digest}` |" for name, digest in files.items()]
    lines += ["", "## Config", "", "```json", json.dumps(config, indent=2, sort_keys=True), "```", ""]
    lines.append(f"_Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._")
    path = folder / "MODEL_CARD.md"
    path.write_text("\n".join(lines) + "\n")
    (folder / "card.json").write_text(json.dumps({"kind": kind, "card": card}, indent=1, default=str))
    return path


def add_card_metrics(folder: str | Path, metrics: dict[str, Any], note: str | None = None) -> Path:
    """Add measured metrics to a component's model card (re-rendered from its card.json)."""
    folder = Path(folder)
    src = json.loads((folder / "card.json").read_text())
    card = src["card"]
    card.setdefault("metrics", {}).update(metrics)
    if note:
        card["summary"] = (card.get("summary", "") + "\n\n" + note).strip()
    config = json.loads((folder / "config.json").read_text())
    files = config.pop("files", {})
    return write_model_card(folder, src["kind"], config, files, card)


def snapshot_component(src: str | Path, dst: str | Path, card: dict[str, Any]) -> dict[str, str]:
    """A frozen, byte-identical copy of a component (weight shards and config.json) under a new name,
    with its own model card. Checksums are verified before and after copying; returns {file: sha256}."""
    src, dst = Path(src), Path(dst)
    config = read_config(src)
    files = dict(config.get("files", {}))
    if not files:
        raise WeightsError(f"{src}/config.json lists no weight files")
    if dst.exists():
        raise FileExistsError(f"{dst} exists; a snapshot is never overwritten in place")
    for name, digest in files.items():
        if sha256_file(src / name) != digest:
            raise WeightsError(f"checksum mismatch for {src / name}; not snapshotting a corrupted component")
    dst.mkdir(parents=True)
    vocabulary = config.get("vocabulary", {}).get("file")
    for name in [*files, "config.json", *([vocabulary] if vocabulary else [])]:
        shutil.copyfile(src / name, dst / name)
    for name, digest in files.items():
        if sha256_file(dst / name) != digest:  # pragma: no cover - a failing disk
            raise WeightsError(f"the copy {dst / name} does not match its checksum")
    if vocabulary and sha256_file(dst / vocabulary) != config["vocabulary"]["sha256"]:
        raise WeightsError(f"{src / vocabulary} does not match the checksum its config.json records")
    config.pop("files")
    write_model_card(dst, config["kind"], config, files, card)
    return files


def update_component_config(folder: str | Path, updates: dict[str, Any], note: str | None = None) -> Path:
    """Change keys of a component's config.json (weights untouched) and re-render its model card."""
    folder = Path(folder)
    config = read_config(folder)
    config.update(updates)
    with atomic_path(folder / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    src = json.loads((folder / "card.json").read_text())
    card = src["card"]
    if note:
        card["summary"] = (card.get("summary", "") + "\n\n" + note).strip()
    files = config.pop("files", {})
    return write_model_card(folder, src["kind"], config, files, card)
