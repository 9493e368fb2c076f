"""Shared CLI pieces: the options every pipeline command takes, model loading, output naming and
reporting (no maths; all checks are :mod:`condiff.validate`'s, shared with the Python API).

Output naming: one image goes to ``--out`` itself; several (``--batch N``, ``--n N``) go to
``STEM-0.png … STEM-{N-1}.png`` beside it, image *i* made with seed + *i*. Every output is checked
(exists, writable, name length) before any model is loaded.
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import typer

from .. import validate as V
from ..errors import InputError

MODEL_OPT = typer.Option("builtin", "--model", "-m", help="Built-in model name or a local Stable Diffusion folder/file.")
DEVICE_OPT = typer.Option(None, "--device", help="cpu, cuda, cuda:1 … (default: cuda when available).")
DTYPE_OPT = typer.Option("auto", "--dtype", help="fp32, fp16, bf16 or auto (fp32 on CPU, fp16 on CUDA; fp16 "
                         "needs a GPU).")
FAST_OPT = typer.Option(False, "--fast", help="Speed options that keep the results (fused QKV projections, "
                        "channels-last); see condiff.acceleration.")
COMPILE_OPT = typer.Option(False, "--compile", help="--fast plus torch.compile of the U-Net and decoder, on CUDA "
                           "with each step replayed as a CUDA graph (the first image of each size compiles, 35-60 s; "
                           "later ones run 2-4x faster).")
OVERWRITE_OPT = typer.Option(False, "--overwrite", help="Replace existing output files.")
PROGRESS_OPT = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with an ETA (off: one "
                            "line per finished output).")
PROVENANCE_OPT = typer.Option(None, "--provenance/--no-provenance", help="Invisible watermark and signed C2PA "
                              "manifest on the output (default: on, unless CONDIFF_PROVENANCE=0).")
JSON_OPT = typer.Option(False, "--json", help="Print what was written as one JSON line (for machines).")


def _threads(value: Optional[int]) -> Optional[int]:
    if value is not None:
        from ..models.registry import set_threads

        try:
            set_threads(value)
        except InputError as err:
            raise typer.BadParameter(str(err)) from None
    return value


THREADS_OPT = typer.Option(None, "--threads", min=1, callback=_threads,
                           help="CPU threads, ≥ 1 (default: OMP_NUM_THREADS, else the cores not busy).")
STEPS_OPT = typer.Option(None, "--steps", min=1, help="Sampling steps, 1-1000 (default: the model's or the "
                         "sampler's; raise the cap with condiff --limit steps=N).")
SAMPLER_OPT = typer.Option("dpmpp_2m", "--sampler", help="Sampler name (list: condiff samplers).")
SCHEDULE_OPT = typer.Option(None, "--schedule", help="σ schedule: karras, exponential, vp, model or auto "
                            "(default: the sampler's).")
ETA_OPT = typer.Option(None, "--eta", min=0.0, max=1.0, help="η in [0, 1] of DDIM and ancestral samplers "
                       "(0 = deterministic DDIM, 1 = DDPM).")
SEED_OPT = typer.Option(0, "--seed", min=0, help="Seed ≥ 0 of the first image; image i uses seed + i.")
GUIDANCE_OPT = typer.Option(None, "--guidance", "-g", help="Classifier-free guidance γ, a finite number (0 = "
                            "unconditional, 1 = conditional; default: the model's).")
NEGATIVE_OPT = typer.Option("", "--negative", "-n", help="Negative prompt (the CFG 'unconditional' branch).")
LORA_OPT = typer.Option([], "--lora", help="LoRA file to apply, FILE or FILE:WEIGHT (repeatable; kohya or diffusers/PEFT keys).")
EMBEDDING_OPT = typer.Option([], "--embedding", help="Textual-inversion embedding file (A1111 or diffusers; repeatable).")


#: the options of every sampling command, as (parameter name, type, option)
SAMPLING = [
    ("negative", str, NEGATIVE_OPT), ("guidance", Optional[float], GUIDANCE_OPT), ("steps", Optional[int], STEPS_OPT),
    ("sampler", str, SAMPLER_OPT), ("schedule", Optional[str], SCHEDULE_OPT), ("eta", Optional[float], ETA_OPT),
    ("seed", int, SEED_OPT),
]
#: model, device and output options of the latent-model commands
RUN = [
    ("model", str, MODEL_OPT), ("device", Optional[str], DEVICE_OPT), ("dtype", str, DTYPE_OPT),
    ("overwrite", bool, OVERWRITE_OPT), ("progress", bool, PROGRESS_OPT), ("as_json", bool, JSON_OPT),
    ("threads", Optional[int], THREADS_OPT), ("provenance", Optional[bool], PROVENANCE_OPT),
]
#: the speed options (condiff.acceleration) of the commands that sample; give the dict to :func:`speed_up`
SPEED = [("fast", bool, FAST_OPT), ("compile", bool, COMPILE_OPT)]


def with_options(**groups: list) -> Callable:
    """Decorator: add each group of shared options (:data:`SAMPLING`, :data:`RUN`, …) to a command's
    signature; the command receives a group as one dict under the group's keyword.

    One declaration of each shared option instead of a copy per command; Typer reads the combined
    signature, so ``--help`` is unchanged.
    """

    def deco(fn: Callable) -> Callable:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name not in groups]
        added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=t)
                 for group in groups.values() for n, t, opt in group]

        @functools.wraps(fn)
        def command(**kwargs):
            parts = {g: {n: kwargs.pop(n) for n, _, _ in group} for g, group in groups.items()}
            return fn(**kwargs, **parts)

        params = own + added
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return deco


def sampling(steps, sampler, schedule, seed, guidance, negative, eta=None) -> dict[str, Any]:
    """The sampling options as the pipelines' keyword arguments, checked before any model loads."""
    from ..pipelines.common import check_request

    check_request(negative=negative, guidance=guidance, steps=steps, sampler=sampler, schedule=schedule, seed=seed,
                  eta=eta)
    kw = dict(steps=steps, sampler=sampler, schedule=schedule, seed=seed, guidance=guidance, negative=negative)
    if eta is not None:
        kw["eta"] = eta
    return kw


def _weight_file(path: Path, what: str) -> Path:
    return V.check_weight_file(path, what)


def personalize(model, loras: list[str], embeddings: list):
    """Apply LoRA files and textual-inversion embeddings (``FILE`` or ``FILE:TOKEN``) to a loaded model;
    returns their record.

    The one place the CLI applies embeddings; unreadable files become :class:`~condiff.errors.ModelError`.
    """
    from ..personalize.embeddings import load_embedding_into_model, parse_embedding_spec
    from ..personalize.lora_formats import apply_lora, parse_lora_spec

    applied = {}
    for spec in loras:
        path, weight = parse_lora_spec(spec)
        with V.wrap_model_errors(path, "LoRA file"):
            apply_lora(model, _weight_file(path, "LoRA file"), V.check_float("LoRA weight", weight))
        applied.setdefault("loras", []).append({"file": str(path), "weight": weight})
    for spec in embeddings:
        with V.wrap_model_errors(spec, "embedding file"):
            path, token = parse_embedding_spec(spec)
            emb = load_embedding_into_model(model, _weight_file(path, "embedding file"), token)
        typer.echo(f"embedding {path.name}: the prompt token is {emb.token!r}", err=True)
        applied.setdefault("embeddings", []).append({"file": str(path), "token": emb.token})
    return applied


def check_personalization_files(loras: list[str], embeddings: list[Path]) -> None:
    """Check LoRA and embedding files before the model is loaded (headers parsed, not applied)."""
    from ..personalize.lora_formats import parse_lora_spec

    for spec in loras:
        with V.wrap_model_errors(spec, "LoRA file"):
            path, weight = parse_lora_spec(spec)
        _weight_file(path, "LoRA file")
        V.check_float("LoRA weight", weight)
    from ..personalize.embeddings import parse_embedding_spec

    for spec in embeddings:
        with V.wrap_model_errors(spec, "embedding file"):
            path, _ = parse_embedding_spec(spec)
        _weight_file(path, "embedding file")


def classifier_guided(model, spec: str):
    """``STYLE[:SCALE]`` -> the model's denoiser wrapped in classifier guidance with the built-in classifier."""
    from ..guidance import ClassifierGuidance
    from ..models.registry import load_component
    from ..nn.classifier import NoisyClassifierGuide

    name, _, scale = spec.partition(":")
    clf, conf = load_component("classifier", device=model.device)
    labels = conf.get("labels", [])
    if name not in labels:
        raise InputError(f"unknown style {name!r} for classifier guidance; choose one of {', '.join(labels)}")
    gamma = V.check_float("classifier-guidance scale", scale) if scale else 1.0
    guide = NoisyClassifierGuide(clf, model.schedule)
    base = ClassifierGuidance(model.denoiser(), guide, gamma, labels=labels.index(name))
    return base, {"style": name, "scale": gamma}


def resolve_device(device: str | None):
    return V.check_device(device)


def resolve_dtype(dtype: str, device):
    return V.check_dtype(dtype, device)


def load(model: str, device: str | None, dtype: str):
    from ..models.registry import load_model

    dev = resolve_device(device)
    return load_model(model, device=dev, dtype=resolve_dtype(dtype, dev)).eval()


def speed_up(model, fast: bool = False, compile: bool = False):
    """Apply the ``--fast`` / ``--compile`` presets (:func:`condiff.acceleration.resolve_speed`)
    after LoRAs and embeddings are applied.

    :class:`~condiff.errors.InputError` for a model with no network :func:`~condiff.acceleration.accelerate`
    covers (:func:`~condiff.acceleration.accelerated_networks`), never a silent no-op;
    :class:`~condiff.errors.DeviceError` for an option the device cannot run.
    """
    from ..acceleration import accelerate, accelerated_networks, resolve_speed

    options = resolve_speed(fast, compile)
    if options is None:
        return model
    if not accelerated_networks(model):
        flags = "/".join(f"--{n}" for n, on in (("fast", fast), ("compile", compile)) if on)
        raise InputError(f"{flags} covers no network of {getattr(model, 'name', type(model).__name__)!r}; "
                         "run without it")
    return accelerate(model, options)


def output_paths(out: Path, n: int, overwrite: bool = False) -> list[Path]:
    """``out`` for one image; ``stem-0.png``, ``stem-1.png``… for several; all checked writable now."""
    V.check_output(out, True)  # suffix, name, folder (the numbered files are checked below)
    paths = [out] if n == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(n)]
    return V.check_outputs(paths, overwrite)


def report(paths: Iterable[Path], as_json: bool = False, **info) -> None:
    """Say what was written: ``wrote FILE`` per file, or one JSON line ``{"wrote": [...], ...}``."""
    paths = [str(p) for p in paths]
    if as_json:
        typer.echo(json.dumps({"wrote": paths, **info}, default=str))
    else:
        for p in paths:
            typer.echo(f"wrote {p}")


def save_result(result, out: Path, overwrite: bool, as_json: bool = False, provenance: bool | None = None,
                ingredients: list | None = None) -> list[Path]:
    """Write every image of ``result`` with its parameters and provenance stamps (names as
    :func:`output_paths`; ``ingredients``: input pictures the C2PA manifest names), then report."""
    from ..images import save_png

    paths = output_paths(out, result.images.shape[0], overwrite)
    for i, p in enumerate(paths):
        save_png(result.images[i:i + 1], p, result.params_for(i), overwrite=overwrite, provenance=provenance,
                 ingredients=ingredients)
        if not as_json:
            typer.echo(f"wrote {p}")
    if as_json:
        report(paths, True, seeds=[result.params_for(i).get("seed") for i in range(len(paths))],
               steps=result.params.get("steps"))
    return paths
