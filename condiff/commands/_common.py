"""Shared CLI helpers: model loading options, output naming, saving with parameters (no maths)."""

from __future__ import annotations

from pathlib import Path

import torch
import typer

from ..images import save_png

MODEL_OPT = typer.Option("builtin", "--model", "-m", help="Built-in model name or a local Stable Diffusion folder/file.")
DEVICE_OPT = typer.Option(None, "--device", help="cpu, cuda, cuda:1 … (default: cuda when available).")
DTYPE_OPT = typer.Option("auto", "--dtype", help="fp32, fp16, bf16 or auto (fp32 on CPU, fp16 on CUDA).")
OVERWRITE_OPT = typer.Option(False, "--overwrite", help="Replace existing output files.")
PROGRESS_OPT = typer.Option(True, "--progress/--no-progress", help="Show a progress bar.")

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


LORA_OPT = typer.Option([], "--lora", help="LoRA file to apply, FILE or FILE:WEIGHT (repeatable; kohya or diffusers/PEFT keys).")
EMBEDDING_OPT = typer.Option([], "--embedding", help="Textual-inversion embedding, FILE or FILE:TOKEN (A1111 or diffusers; "
                             "repeatable). Without TOKEN an A1111 file binds to its file name, a diffusers file to its key.")


def personalize(model, loras: list[str], embeddings: list):
    """Apply LoRA files and textual-inversion embeddings to a loaded model; returns their record."""
    from ..personalize.embeddings import load_embedding_into_model, parse_embedding_spec
    from ..personalize.lora_formats import apply_lora, parse_lora_spec

    applied = {}
    for spec in loras:
        path, weight = parse_lora_spec(spec)
        apply_lora(model, path, weight)
        applied.setdefault("loras", []).append({"file": str(path), "weight": weight})
    for spec in embeddings:
        path, token = parse_embedding_spec(spec)
        emb = load_embedding_into_model(model, path, token)
        typer.echo(f"embedding {path.name}: the prompt token is {emb.token!r}", err=True)
        applied.setdefault("embeddings", []).append({"file": str(path), "token": emb.token})
    return applied


def classifier_guided(model, spec: str):
    """``STYLE[:SCALE]`` -> the model's denoiser wrapped in classifier guidance with the built-in classifier."""
    from ..guidance import ClassifierGuidance
    from ..models.registry import load_component
    from ..nn.classifier import NoisyClassifierGuide

    name, _, scale = spec.partition(":")
    clf, conf = load_component("classifier", device=model.device)
    labels = conf.get("labels", [])
    if name not in labels:
        raise ValueError(f"unknown style {name!r} for classifier guidance; choose one of {', '.join(labels)}")
    try:
        gamma = float(scale) if scale else 1.0
    except ValueError:
        raise ValueError(f"classifier-guidance scale {scale!r} is not a number") from None
    guide = NoisyClassifierGuide(clf, model.schedule)
    base = ClassifierGuidance(model.denoiser(), guide, gamma, labels=labels.index(name))
    return base, {"style": name, "scale": gamma}


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown --dtype {dtype!r}; choose fp32, fp16, bf16 or auto")
    return _DTYPES[dtype]


def load(model: str, device: str | None, dtype: str):
    from ..models.registry import load_model

    dev = resolve_device(device)
    return load_model(model, device=dev, dtype=resolve_dtype(dtype, dev)).eval()


def output_paths(out: Path, n: int) -> list[Path]:
    """``out`` for one image; ``stem-0.png``, ``stem-1.png``… for several."""
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file name, got {out}")
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(n)]


def save_result(result, out: Path, overwrite: bool) -> list[Path]:
    paths = output_paths(out, result.images.shape[0])
    for p in paths:  # refuse before writing anything
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; pass --overwrite to replace it")
    for i, p in enumerate(paths):
        save_png(result.images[i:i + 1], p, result.params_for(i), overwrite=overwrite)
        typer.echo(f"wrote {p}")
    return paths
