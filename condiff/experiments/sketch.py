"""Experiment 1 (thesis §4.2): turning a sketch into an image, measured.

Three sweeps on the shipped sketch (:mod:`condiff.data.experiment_inputs`), each cell with the
same seeds:

* **SDEdit** (Meng et al. 2022; thesis §3.1.2, Fig. 4.2): strength t0 ∈ {0, .2, .4, .6, .8, 1} at
  CFG scale γ = 5. Expected: t0 trades faithfulness to the sketch for realism.
* **Classifier-free guidance** (Ho & Salimans 2022; thesis eq. 3.9, Fig. 4.3): γ ∈ {1, 2.5, 5,
  10, 20, 40} at t0 = 0.6. Expected: prompt adherence rises with γ, artefacts above γ ≈ 10.
* **ControlNet** (Zhang et al. 2023; thesis §3.1.3, Figs. 4.4/4.5): one ControlNet per condition
  type whose weights exist, its condition preprocessed from the sketch; text-to-image from noise.

Metrics, per image (means with bootstrap 95 % CIs):

* faithfulness: SSIM to the sketch (Wang et al. 2004) and the LPIPS-like filter-bank distance
  (:mod:`condiff.metrics.perceptual`; lower = closer);
* realism: the evalenc prompt score 100·cos(image, prompt) and the evalenc similarity to the
  coloured original the sketch was traced from (the built-in world has that ground truth; the
  thesis had none), plus the LPIPS-like distance to it. A Fréchet distance needs far more images
  than a cell holds (a 384-d covariance), so it is not reported here;
* ControlNet adherence: the condition re-extracted from the result with the same preprocessor,
  compared with the input condition (:mod:`condiff.metrics.adherence`): edge F1 (canny, lineart,
  softedge), 1 − AbsRel after scale/shift alignment (depth), share of normals within 30° (normal),
  PCK@0.1 of the estimated keypoints (pose).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..metrics.adherence import depth_errors, edge_f1, keypoint_scores, normal_angular_error
from ..metrics.clip_score import clip_score
from ..metrics.image import ssim
from ..metrics.perceptual import filter_bank_distance
from .config import EXPERIMENT_TITLES, SketchConfig, to_dict
from .context import ExperimentContext, ExperimentResult, Figure, Table, as_unit_batch, cell_timer, fmt_summary, summarize, to_model_size
from .memorisation import memorisation_notes, nearest_training
from .report import plot_bars, plot_curves, plot_tradeoff
from .sweep import Axis, SweepResult, image_grid, pipeline_renderer, run_sweep

__all__ = ["run_sketch", "sketch_inputs", "provenance_note", "adherence_scores", "ADHERENCE_METRIC"]

#: What the adherence column measures for each condition type (all in [0, 1], higher = closer).
ADHERENCE_METRIC = {"canny": "edge F1", "lineart": "edge F1", "softedge": "edge F1", "depth": "1 − depth AbsRel",
                    "normal": "normals within 30°", "pose": "keypoint PCK@0.1"}
_EDGES = ("canny", "lineart", "softedge")


def sketch_inputs(size: int) -> tuple[Tensor, Tensor, str]:
    """(sketch, coloured original) as [1, 3, size, size] in [0, 1], and the shipped prompt."""
    from ..data.experiment_inputs import load_experiment_inputs

    doc = load_experiment_inputs()["exp1"]
    sketch = to_model_size(as_unit_batch(doc["sketch_image"]), size)
    reference = to_model_size(as_unit_batch(doc["reference_image"]), size)
    return sketch, reference, doc["prompt"]


def provenance_note() -> str:
    """How the inputs of experiments 1 and 2 were chosen (from the shipped experiments.json)."""
    from ..data.experiment_inputs import INPUT_PACKAGE, load_experiment_inputs

    doc = load_experiment_inputs()
    sources = [doc["exp1"]["source"]] + [t["source"] for t in doc["exp2"]]
    return (f"Input provenance: {', '.join(dict.fromkeys(sources))} from EmojiOne 2 ({INPUT_PACKAGE}, "
            f"{doc['exp1']['license']}), a vendor in no training set of condiff — no model saw these pictures, this "
            "vendor's style or a recoloured twin of them; their concepts are known from the other vendors.")


def _uint8(img: Tensor) -> np.ndarray:
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _extract(kind: str, images: Tensor) -> Tensor:
    from ..preprocess import get_preprocessor

    fn = get_preprocessor(kind)
    return torch.stack([torch.from_numpy(np.ascontiguousarray(fn(_uint8(im)))).permute(2, 0, 1).float() / 255
                        for im in images])


def _keypoints(image: Tensor) -> np.ndarray | None:
    from ..preprocess.pose import estimate_keypoints

    return estimate_keypoints(_uint8(image))


def adherence_scores(kind: str, images: Tensor, condition: Tensor, source: Tensor) -> Tensor | None:
    """Per-image adherence of ``images`` [n, 3, H, W] to ``condition`` [1, 3, H, W] (see the module doc).

    ``source`` is the picture the condition was made from (for pose keypoints). None when the
    condition itself is empty (no edges, no depth, no pose found in the input).
    """
    n = images.shape[0]
    if kind == "pose":
        target = _keypoints(source[0])
        if target is None or target[:, 2].sum() == 0:
            return None
        t = torch.from_numpy(np.asarray(target, dtype=np.float64))
        preds = [_keypoints(im) for im in images]
        p = torch.stack([torch.from_numpy(np.asarray(k, dtype=np.float64)) if k is not None else torch.zeros_like(t)
                         for k in preds])
        return keypoint_scores(p[..., :2], t[None, :, :2].expand(n, -1, -1), pred_visible=p[..., 2] > 0,
                               target_visible=(t[None, :, 2] > 0).expand(n, -1)).pck
    maps = _extract(kind, images)
    cond = condition.float().cpu().expand(n, -1, -1, -1)
    if kind in _EDGES:
        if float(cond.mean(1).max()) <= 0.5:
            return None
        return edge_f1(maps.mean(1), cond.mean(1)).f1
    if kind == "depth":
        if float(cond[:, 0].max()) <= 0:
            return None
        return (1.0 - depth_errors(maps[:, 0], cond[:, 0]).abs_rel).clamp(0, 1)
    if kind == "normal":
        try:
            return normal_angular_error(maps * 2 - 1, cond * 2 - 1).within_30
        except ValueError:
            return None
    raise ValueError(f"no adherence measure for condition type {kind!r}; known: {', '.join(ADHERENCE_METRIC)}")


def _image_metrics(ctx: ExperimentContext, sketch: Tensor, reference: Tensor, prompt: str
                   ) -> dict[str, Callable[[Tensor, dict], Tensor]]:
    def per(fn):
        return lambda imgs, _p: fn(imgs)

    m: dict[str, Callable[[Tensor, dict], Tensor]] = {
        "ssim_sketch": per(lambda x: ssim(x, sketch.expand_as(x))),
        "lpips_like_sketch": per(lambda x: filter_bank_distance(x, sketch.expand_as(x))),
        "lpips_like_reference": per(lambda x: filter_bank_distance(x, reference.expand_as(x))),
    }
    m["train_rmse"] = per(lambda x: [r["rmse"] for r in nearest_training(x)])
    if ctx.evalenc is not None:
        ref_emb = ctx.evalenc.embed_images(reference)
        text_emb = ctx.evalenc.embed_texts([prompt])
        cache: list = [None, None]  # (images, embeddings) of the cell being measured: one encoder pass per cell

        def embed(x: Tensor) -> Tensor:
            if cache[0] is not x:
                cache[:] = [x, ctx.evalenc.embed_images(x)]
            return cache[1]

        m["evalenc_prompt"] = per(lambda x: clip_score(embed(x), text_emb.expand(x.shape[0], -1)))
        m["evalenc_reference"] = per(lambda x: 100.0 * (embed(x) @ ref_emb.t())[:, 0])
    return m


_LABELS = {"ssim_sketch": "SSIM to sketch ↑ (faithfulness)", "lpips_like_sketch": "LPIPS-like to sketch ↓",
           "lpips_like_reference": "LPIPS-like to original ↓", "evalenc_prompt": "evalenc prompt score ↑",
           "evalenc_reference": "evalenc sim. to original ↑", "adherence": "adherence ↑",
           "train_rmse": "RMSE to nearest training picture (16×16) ↑"}


def _by_value(sweep: SweepResult, axis: str) -> dict[str, dict[str, Any]]:
    return {f"{axis}={c.params[axis]:g}" if isinstance(c.params[axis], float) else f"{axis}={c.params[axis]}":
            {m: summarize(v) for m, v in c.metrics.items()} for c in sweep.cells}


def _memoized(render: Callable[[dict], Tensor]) -> Callable[[dict], Tensor]:
    """``render`` that returns the same images for the same parameters without sampling again: the CFG
    sweep's cell at (t0, γ) of the SDEdit sweep is that cell (fixed seeds make sampling deterministic)."""
    done: dict[tuple, Tensor] = {}

    def render_once(params: dict) -> Tensor:
        key = tuple(sorted((k, repr(v)) for k, v in params.items()))
        if key not in done:
            done[key] = render(params)
        return done[key]

    return render_once


def _sweep(ctx: ExperimentContext, res: ExperimentResult, what: str, render, axes, base, metrics) -> SweepResult:
    """:func:`run_sweep` of every cell, each cell's wall and CPU time in ``res.measurements["cell_seconds"]``."""
    timings = res.measurements.setdefault("cell_seconds", {})

    def label(params: dict) -> str:
        return ", ".join(f"{a.name}={params[a.name]}" for a in axes)

    def timed(params: dict) -> Tensor:
        with cell_timer(timings, f"{what}: {label(params)}", announce=not ctx.show_progress):
            return render(params)

    sw = run_sweep(timed, axes, base, metrics, show_progress=ctx.show_progress, desc=what)
    memo = res.metrics.setdefault("memorisation", [])
    for c in sw.cells:
        for i, near in enumerate(nearest_training(c.images)):
            memo.append({"sweep": what, "cell": label(c.params), "seed": int(c.params.get("seed", 0)) + i,
                         "train_nearest": near["nearest"], "train_rmse": near["rmse"]})
    return sw


def _figure_sweep(ctx: ExperimentContext, res: ExperimentResult, names: tuple[str, str, str], render, values,
                  base: dict, metrics: dict, titles: tuple[str, str, str]) -> SweepResult:
    """A one-axis sweep with its grid figure, its table and its metrics: ``names`` = (key, description, axis),
    ``titles`` = (figure title, figure caption, table title)."""
    key, what, axis = names
    sw = _sweep(ctx, res, what, render, [Axis(axis, values)], base, metrics)
    res.figures.append(Figure(f"{key}_grid", titles[0], sw.grids()[0], titles[1], "grid"))
    res.tables.append(sw.table(key, titles[2], ctx.evalenc_name))
    res.metrics[key] = _by_value(sw, axis)
    return sw


def run_sketch(ctx: ExperimentContext, config: SketchConfig) -> ExperimentResult:
    """Run experiment 1 on ``ctx.model`` (see the module doc)."""
    t_start = time.perf_counter()
    run = config.run
    res = ExperimentResult("sketch", EXPERIMENT_TITLES["sketch"], to_dict(config), seeds=run.seeds)
    model = ctx.model
    size = model.image_size
    sketch, reference, shipped_prompt = sketch_inputs(size)
    prompt = config.prompt or shipped_prompt
    res.notes.append(f"prompt {prompt!r}; the thesis: 'A painting of a woman in the style of a renaissance artist'")
    res.notes.append(provenance_note())
    res.notes += memorisation_notes({"sketch": sketch, "coloured original": reference})
    res.notes.append("No Fréchet distance: a cell holds a few images, far too few for a 384-d covariance; realism is "
                     "measured per image (evalenc prompt score, similarity to the original the sketch was traced from).")
    if ctx.evalenc is None:
        res.skip("evalenc metrics", "no evaluation encoder (component 'evalenc' absent): prompt score and "
                 "similarity to the original are not measured")
    metrics = _image_metrics(ctx, sketch, reference, prompt)
    n = run.images_per_cell
    base = {"prompt": prompt, "negative": config.negative, "steps": run.steps, "sampler": run.sampler, "seed": run.seed}
    sdedit_render = _memoized(pipeline_renderer(model, "sdedit", image=sketch, images_per_cell=n,
                                                show_progress=ctx.show_progress))
    res.figures.append(Figure("inputs", "Inputs (cf. Fig. 4.1)", image_grid(
        [[sketch, reference]], row_labels=["exp. 1"], col_labels=["sketch (input)", "coloured original (reference)"]),
        "The sketch is the exact line art of the original; the original is used only for measuring.", "image"))
    realism_key = "evalenc_prompt" if ctx.evalenc is not None else "lpips_like_reference"

    # ---- SDEdit t0 sweep (Fig. 4.2)
    sw = _figure_sweep(ctx, res, ("sdedit", "SDEdit sweep", "strength"), sdedit_render, config.sdedit.strengths,
                       {**base, "guidance": config.sdedit.guidance}, metrics,
                       (f"SDEdit over t0 at γ = {config.sdedit.guidance:g} (Fig. 4.2)",
                        "Rows: strength t0; columns: seeds (shared by every row).",
                        "SDEdit: faithfulness vs. realism over t0"))
    first, last = sw.cells[0], sw.cells[-1]
    t_a, t_b = first.params["strength"], last.params["strength"]
    res.headlines.append(
        f"SDEdit: SSIM to the sketch {fmt_summary(summarize(first.metrics['ssim_sketch']))} at t0={t_a:g} → "
        f"{fmt_summary(summarize(last.metrics['ssim_sketch']))} at t0={t_b:g}; {_LABELS[realism_key]} "
        f"{fmt_summary(summarize(first.metrics[realism_key]))} → {fmt_summary(summarize(last.metrics[realism_key]))}")
    res.figures.append(Figure("tradeoff_t0", "Faithfulness–realism trade-off over t0", plot_tradeoff(
        [(f"t0={c.params['strength']:g}", summarize(c.metrics["ssim_sketch"]), summarize(c.metrics[realism_key]))
         for c in sw.cells], xlabel=_LABELS["ssim_sketch"], ylabel=_LABELS[realism_key],
        title="SDEdit: faithfulness vs. realism"), "95 % bootstrap intervals over the seeds.", "plot"))

    # ---- CFG γ sweep (Fig. 4.3)
    sw = _figure_sweep(ctx, res, ("cfg", "CFG sweep", "guidance"), sdedit_render, config.cfg.guidances,
                       {**base, "strength": config.cfg.strength}, metrics,
                       (f"Classifier-free guidance γ at t0 = {config.cfg.strength:g} (Fig. 4.3)",
                        "Rows: guidance scale γ; columns: seeds.", "Classifier-free guidance: adherence over γ"))
    key = "evalenc_prompt" if ctx.evalenc is not None else "ssim_sketch"
    gammas = [c.params["guidance"] for c in sw.cells]
    means = [summarize(c.metrics[key])["mean"] for c in sw.cells]
    best = max(range(len(means)), key=lambda i: means[i])
    res.headlines.append(f"CFG at t0={config.cfg.strength:g}: {_LABELS[key]} " + ", ".join(
        f"γ={g:g}: {m:.3g}" for g, m in zip(gammas, means)) + f" (highest at γ={gammas[best]:g})")
    keys = [k for k in ("evalenc_prompt", "ssim_sketch", "lpips_like_reference") if k in sw.metric_names]
    res.figures.append(Figure("adherence_gamma", "Prompt adherence and faithfulness over γ", plot_curves(
        gammas, {k: [summarize(c.metrics[k]) for c in sw.cells] for k in keys}, xlabel="γ",
        ylabels=_LABELS, log_x=True, title=f"CFG sweep at t0 = {config.cfg.strength:g}"),
        "Shaded: 95 % bootstrap intervals over the seeds.", "plot"))

    # ---- ControlNets (Figs. 4.4/4.5)
    _controlnets(ctx, config, res, sketch, prompt, base, metrics)
    memo = res.metrics.get("memorisation", [])
    res.tables.append(Table("memorisation", "Every generated picture and its nearest training picture",
                            ["sweep", "cell", "seed", "train_rmse", "train_nearest"], memo))
    if memo:
        low = min(memo, key=lambda r: r["train_rmse"])
        res.headlines.append(f"Memorisation check: the closest of {len(memo)} generated pictures lies {low['train_rmse']:.3f} "
                             f"from a training picture ({low['train_nearest']}; {low['sweep']}, {low['cell']}).")
    res.wall_s = time.perf_counter() - t_start
    res.measurements["seconds"] = round(res.wall_s, 2)
    return res


def _controlnets(ctx: ExperimentContext, config: SketchConfig, res: ExperimentResult, sketch: Tensor, prompt: str,
                 base: dict, metrics: dict) -> None:
    from ..pipelines.control import prepare_condition, resolve_controlnets

    model, size = ctx.model, ctx.model.image_size
    nets, conditions = {}, {}
    for kind in config.controlnet.types:
        try:
            given = {kind: ctx.controlnets[kind]} if kind in ctx.controlnets else None
            nets[kind] = resolve_controlnets(model, [kind], given)[0]
        except (ValueError, OSError) as err:
            res.skip(f"ControlNet {kind}", str(err))
            continue
        conditions[kind] = prepare_condition(sketch, kind, size=(size, size))
    if not nets:
        return
    res.figures.append(Figure("controlnet_conditions", "ControlNet conditions preprocessed from the sketch (Fig. 4.4)",
                              image_grid([[conditions[k] for k in nets]], row_labels=["condition"], col_labels=list(nets)),
                              "Substitute preprocessors where the thesis used networks: see condiff.preprocess.",
                              "image"))

    def adherence(images: Tensor, params: dict) -> Tensor | None:
        kind = params["control_type"]
        return adherence_scores(kind, images, conditions[kind], sketch)

    render = pipeline_renderer(model, "control", image=sketch, images_per_cell=config.run.images_per_cell,
                               controlnets=nets, show_progress=ctx.show_progress)
    sw = _sweep(ctx, res, "ControlNet sweep", render, [Axis("control_type", list(nets))],
                {**base, "guidance": config.controlnet.guidance, "control_scale": config.controlnet.scale},
                {"adherence": adherence, **metrics})
    res.figures.append(Figure("controlnet_grid", "One ControlNet per condition type (Fig. 4.5)", sw.grids()[0],
                              "Rows: condition type; columns: seeds. Text-to-image from noise under the condition.", "grid"))
    table = sw.table("controlnet", "ControlNet: condition adherence per type", ctx.evalenc_name)
    for row in table.rows:
        row["adherence metric"] = ADHERENCE_METRIC[row["control_type"]]
    table.columns.insert(1, "adherence metric")
    for c in sw.cells:
        if "adherence" not in c.metrics:
            table.notes.append(f"{c.params['control_type']}: no adherence score, the condition of the input is empty")
    res.tables.append(table)
    res.metrics["controlnet"] = {c.params["control_type"]: {"adherence_metric": ADHERENCE_METRIC[c.params["control_type"]],
                                                            **{m: summarize(v) for m, v in c.metrics.items()}}
                                 for c in sw.cells}
    res.headlines.append("ControlNet adherence: " + ", ".join(
        f"{c.params['control_type']} {fmt_summary(summarize(c.metrics['adherence']))} ({ADHERENCE_METRIC[c.params['control_type']]})"
        for c in sw.cells if "adherence" in c.metrics))
    panels = {"adherence ↑ (per type's measure)": [summarize(c.metrics.get("adherence", [])) for c in sw.cells],
              _LABELS["ssim_sketch"]: [summarize(c.metrics["ssim_sketch"]) for c in sw.cells]}
    if ctx.evalenc is not None:
        panels[_LABELS["evalenc_prompt"]] = [summarize(c.metrics["evalenc_prompt"]) for c in sw.cells]
    res.figures.append(Figure("controlnet_adherence", "ControlNet adherence per condition type", plot_bars(
        [f"{c.params['control_type']}\n({ADHERENCE_METRIC[c.params['control_type']]})" for c in sw.cells], panels,
        title="ControlNets on the sketch"),
        "Adherence: the condition re-extracted from the result vs. the input condition.", "plot"))
