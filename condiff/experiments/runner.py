"""Run the thesis's experiments by name and write the report.

:func:`run_experiments` loads the model (built-in or a local Stable Diffusion checkpoint) and the
evaluation encoder once, runs the requested experiments in the thesis's order — every cell of
every experiment, whatever the clock says — and writes ``report.html`` + ``results.json``
(:mod:`condiff.experiments.report`) with the wall time and the machine's load average at the start
and the end. :func:`run_demo` is ``condiff demo``: all three experiments with their ``[quick]``
settings on the built-in models (about 4 minutes on an idle 2-core CPU; DESIGN.md §7). Everything runs in float32 with fixed
seeds (and deterministic cuDNN kernels on CUDA), so two runs on the same device give the same
metrics bit for bit; times and memory are reported apart, as measurements.

The two loaders (:func:`load_experiment_model`, :func:`load_evaluation_encoder`) are module-level
functions so that tests can replace them with tiny stand-ins.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .config import EXPERIMENT_NAMES, load_config
from .context import EvalEncoder, ExperimentContext, ExperimentResult
from .report import run_info, write_report

__all__ = ["EXPERIMENTS", "DEMO_CPU_THREADS", "demo_threads", "choose_threads", "RunOutput",
           "resolve_names", "default_cache_dir", "load_experiment_model",
           "load_evaluation_encoder", "run_experiments", "run_demo", "run_adhoc_sweep"]

def _runner(name: str) -> Callable[[ExperimentContext, Any], ExperimentResult]:
    if name == "sketch":
        from .sketch import run_sketch

        return run_sketch
    if name == "inpainting":
        from .inpainting import run_inpainting

        return run_inpainting
    from .personalization import run_personalization

    return run_personalization


EXPERIMENTS = EXPERIMENT_NAMES


def choose_threads(requested: int | None = None) -> int:
    """Torch threads for the run: ``requested``, else torch's current setting.

    The thread count changes float summation order in matrix products (differences ~1e-7 seen in
    evalenc scores between 1 and 2 threads), so numbers are bit-identical for the same seed,
    device *and* thread count; the count is recorded in results.json.
    """
    if requested is None:
        return torch.get_num_threads()
    if requested < 1:
        raise ValueError(f"--threads must be ≥ 1, got {requested}")
    return int(requested)


@contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def _deterministic(device: torch.device):
    """On CUDA: deterministic cuDNN kernels (no autotuning) for the run, restored afterwards."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


@dataclass
class RunOutput:
    results: list[ExperimentResult]
    report: Path
    results_json: Path
    info: dict[str, Any]


def resolve_names(names: str | Sequence[str]) -> list[str]:
    """``"all"`` or experiment names -> the names in the thesis's order (ValueError on unknown names)."""
    names = [names] if isinstance(names, str) else list(names)
    if "all" in names:
        return list(EXPERIMENTS)
    bad = [n for n in names if n not in EXPERIMENTS]
    if bad or not names:
        raise ValueError(f"unknown experiment(s) {bad or names}; choose from {', '.join(EXPERIMENTS)} or all")
    return [n for n in EXPERIMENTS if n in names]


def default_cache_dir() -> Path:
    """``$CONDIFF_CACHE`` or ``~/.cache/condiff`` (personalization results, class images)."""
    return Path(os.environ.get("CONDIFF_CACHE", Path.home() / ".cache" / "condiff")).expanduser()


def load_experiment_model(spec: str, device: torch.device):
    """The model under test, in float32 (experiments train and measure; fp16 would change the numbers)."""
    from ..models.registry import load_model

    return load_model(spec, device=device, dtype=torch.float32).eval()


def load_evaluation_encoder(device: torch.device) -> EvalEncoder:
    """condiff-evalenc + MiniLM (ValueError when the weights are absent)."""
    return EvalEncoder.builtin(device)


def run_experiments(
    names: str | Sequence[str] = "all",
    *,
    model: str | Any = "builtin",
    device: str | torch.device = "cpu",
    out: str | Path = "experiments-out",
    quick: bool = False,
    configs: Mapping[str, str | Path] | None = None,
    seed: int | None = None,
    train: bool = False,
    cache_dir: str | Path | None = None,
    evalenc: EvalEncoder | None | str = "auto",
    controlnets: Mapping[str, Any] | None = None,
    show_progress: bool = True,
    threads: int | None = None,
    command: str | None = None,
    title: str = "condiff experiments",
) -> RunOutput:
    """Run experiments and write the report into ``out`` (see the module doc).

    ``model``: a name/path for :func:`load_experiment_model` or a LatentDiffusion; ``configs``: a
    TOML path per experiment (default: its recipe); ``seed`` overrides every config's seed;
    ``evalenc``: "auto" (the built-in one if present, else none, reported), an encoder, or None;
    ``threads``: torch threads during the run (default: unchanged; see :func:`choose_threads`).
    """
    order = resolve_names(names)
    configs = dict(configs or {})
    unknown = sorted(set(configs) - set(EXPERIMENTS))
    if unknown:
        raise ValueError(f"configs given for unknown experiment(s) {unknown}; choose from {', '.join(EXPERIMENTS)}")
    dev = torch.device(device)
    loaded = {n: load_config(configs.get(n, n), experiment=n, quick=quick) for n in order}  # fail before any work
    if seed is not None:
        if seed < 0:
            raise ValueError(f"--seed must be ≥ 0, got {seed}")
        for cfg in loaded.values():
            cfg.run.seed = int(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    n_threads = choose_threads(threads)
    info = run_info(dev, command)
    info["torch_threads"] = n_threads
    lm = load_experiment_model(model, dev) if isinstance(model, (str, Path)) else model
    notes = []
    if evalenc == "auto":
        try:
            evalenc = load_evaluation_encoder(dev)
        except (ValueError, OSError) as err:
            evalenc = None
            notes.append(f"no evaluation encoder: {err}")
    ctx = ExperimentContext(lm, dev, evalenc, dict(controlnets or {}), train,
                            Path(cache_dir) if cache_dir is not None else default_cache_dir(), show_progress, notes)
    info.update({"model": getattr(lm, "name", str(model)), "image_size": getattr(lm, "image_size", None),
                 "quick": quick, "train": train, "feature_extractor": ctx.evalenc_name or "none (absent)"})
    results = []
    from tqdm.auto import tqdm

    with _deterministic(dev), _threads(n_threads):
        for name in tqdm(order, desc="experiments", disable=not show_progress):
            r = _runner(name)(ctx, loaded[name])
            r.notes[:0] = notes
            results.append(r)
    info["wall_s"] = round(time.perf_counter() - t0, 1)
    info["cpu_s"] = round(time.process_time() - c0, 1)
    try:
        info["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    report, results_json = write_report(results, out, info, title=title)
    return RunOutput(results, report, results_json, info)


#: Threads of ``condiff demo`` on a CPU when the machine is busy. Two spinning OpenMP threads on a
#: 2-core machine shared with other jobs ran 10–18× slower than one (49–90 s vs. 5 s for the same
#: three SDEdit cells at load ≈ 4); on an idle machine every core helps (:func:`demo_threads`).
DEMO_CPU_THREADS = 1


def demo_threads(cpu_count: int | None = None, load: float | None = None) -> int:
    """Torch threads for ``condiff demo`` on a CPU: ``$OMP_NUM_THREADS`` when set, else the cores the
    machine can give now — its core count minus the 1-minute load average, rounded, at least
    :data:`DEMO_CPU_THREADS`. The count is recorded in results.json (numbers are bit-identical per count)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    cores = cpu_count or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return DEMO_CPU_THREADS
    return max(DEMO_CPU_THREADS, min(cores, int(round(cores - load))))


def run_demo(out: str | Path = "demo-out", *, device: str | torch.device = "cpu", train: bool = False,
             show_progress: bool = True, threads: int | None = None, **kwargs) -> RunOutput:
    """``condiff demo``: the three experiments, reduced, on the built-in models (see the module doc)."""
    if threads is None and torch.device(device).type == "cpu":
        threads = demo_threads()
    return run_experiments("all", model=kwargs.pop("model", "builtin"), device=device, out=out, quick=True, train=train,
                           show_progress=show_progress, threads=threads,
                           title="condiff demo: the thesis's experiments", **kwargs)


def _fixed_params(items: Sequence[str]) -> dict[str, Any]:
    """``["strength=0.6", "control_type=canny"]`` -> typed values (as an axis of one value would parse them)."""
    from .sweep import parse_axis

    out = {}
    for item in items:
        axis = parse_axis(item)
        if len(axis.values) != 1:
            raise ValueError(f"--set takes one value per parameter, got {item!r}; sweep it with -x/-y/-z instead")
        out[axis.name] = axis.values[0]
    return out


def run_adhoc_sweep(pipeline: str, prompt: str, axes: Sequence[str], fixed: Sequence[str] = (), *,
                    image: str | Path | None = None, mask: str | Path | None = None, lora: str | Path | None = None,
                    images: int = 2, seed: int = 0, out: str | Path = "sweep-out", model: str | Any = "builtin",
                    device: str | torch.device = "cpu", evalenc: EvalEncoder | None | str = "auto",
                    show_progress: bool = True, threads: int | None = None) -> RunOutput:
    """``condiff experiment sweep``: an X/Y/Z grid of ``pipeline`` with metrics, written as a report.

    Metrics per image: the evalenc prompt score (when the encoder is present) and, for pipelines
    with an input image, SSIM and the LPIPS-like distance to it.
    """
    from ..images import fit_image, load_image, load_mask
    from ..metrics.image import ssim
    from ..metrics.perceptual import filter_bank_distance
    from .context import Figure, summarize
    from .sweep import pipeline_renderer, parse_axis, run_sweep

    parsed = [parse_axis(a) for a in axes]
    base = {"prompt": prompt, "seed": int(seed), **_fixed_params(fixed)}
    for a in parsed:
        base.pop(a.name, None)
    t0 = time.perf_counter()
    dev = torch.device(device)
    info = run_info(dev, f"condiff experiment sweep {pipeline} {' '.join(axes)}")
    info["torch_threads"] = choose_threads(threads)
    lm = load_experiment_model(model, dev) if isinstance(model, (str, Path)) else model
    size = (lm.image_size, lm.image_size)
    img = fit_image(load_image(image), size=size) if image is not None else None
    msk = (fit_image(load_mask(mask), size=size) > 0.5).float() if mask is not None else None
    net = None
    if lora is not None:
        from ..personalize import apply_lora

        net = apply_lora(lm, lora)
    notes = []
    if evalenc == "auto":
        try:
            evalenc = load_evaluation_encoder(dev)
        except (ValueError, OSError) as err:
            evalenc, notes = None, [f"no evaluation encoder: {err}"]
    metrics: dict[str, Callable] = {}
    if evalenc is not None:
        metrics["evalenc_prompt"] = lambda x, p: evalenc.prompt_scores(x, p["prompt"])
    if img is not None:
        metrics["ssim_input"] = lambda x, p: ssim(x, img.expand_as(x))
        metrics["lpips_like_input"] = lambda x, p: filter_bank_distance(x, img.expand_as(x))
    render = pipeline_renderer(lm, pipeline, images_per_cell=images, image=img, mask=msk, lora=net,
                               show_progress=False)
    try:
        with _threads(choose_threads(threads)):
            sw = run_sweep(render, parsed, base, metrics, show_progress=show_progress, desc=f"sweep {pipeline}")
    finally:
        if net is not None:
            net.detach()
    res = ExperimentResult("sweep", f"Sweep of the {pipeline} pipeline", {"pipeline": pipeline, "axes": list(axes),
                           "fixed": base, "images_per_cell": images}, seeds=[seed + i for i in range(images)], notes=notes)
    axis_names = " × ".join(a.name for a in parsed)
    for k, g in enumerate(sw.grids(title=f"{pipeline}: {axis_names}")):
        res.figures.append(Figure(f"grid_{k}", f"Grid {k + 1}: {axis_names}", g, "", "grid"))
    res.tables.append(sw.table("sweep", f"Metrics per cell ({axis_names})", evalenc.name if evalenc is not None else None))
    res.metrics = {"cells": [{**{a.name: c.params[a.name] for a in parsed}, **{m: summarize(v) for m, v in c.metrics.items()}}
                             for c in sw.cells]}
    res.wall_s = time.perf_counter() - t0
    info["wall_s"] = round(res.wall_s, 1)
    report, results_json = write_report([res], out, info, title=f"condiff sweep: {pipeline}")
    return RunOutput([res], report, results_json, info)
