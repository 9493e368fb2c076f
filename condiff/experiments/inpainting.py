"""Experiment 2 (thesis §4.3): three inpainting tasks × the architectures present, measured.

The architectures and their measurements (time, peak memory, parameters, evalenc prompt score
inside the mask and on the whole picture, PSNR/SSIM outside the mask before and after the
composite) come from :mod:`condiff.experiments.architectures`; this module runs them for every
seed of the config, adds

* the **seam** the composite leaves: ``seam_error(composite) − seam_error(original)`` along the
  mask border (:func:`condiff.metrics.seam_error`; 0 = the border is as smooth as in the original);
* the **autoencoder round-trip artefact map** (Fig. 4.15): |x − D(E(x))| of the latent model's
  autoencoder on every task picture, with PSNR inside/outside the mask — the error a latent model
  makes outside the mask *before* compositing (thesis §4.3.4), which the composite removes;

* the **memorisation check** of every raw and composited output (:mod:`condiff.experiments.memorisation`);
* for the built-in model, the **coherence** measurement of model / blend / RePaint × blending modes on
  held-out pictures and on the tasks (:mod:`condiff.experiments.coherence`), measured offline and
  shown cached with its command and n;

and draws the figures: inputs with masks (Figs. 4.6/4.7), raw outputs (Figs. 4.8/4.12/4.14),
composites (Figs. 4.13/4.16), the artefact map and per-architecture bars. Means over tasks × seeds
carry bootstrap 95 % intervals. The thesis's DALL-E 2 ran through a paid API; condiff never touches
the network in an experiment, so its counterpart here is the local unCLIP model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..compositing import resize_mask
from ..metrics.image import psnr, seam_error
from .config import EXPERIMENT_TITLES, InpaintingConfig, to_dict
from .context import ExperimentContext, ExperimentResult, Figure, Table, cell_timer, fmt_summary, summarize, to_model_size
from .memorisation import memorisation_notes, nearest_training
from .report import COLUMN_LABELS, plot_bars
from .sweep import image_grid

__all__ = ["run_inpainting", "autoencoder_round_trip", "ARCHITECTURE_COUNTERPARTS"]

#: condiff architecture -> what the thesis ran in its place.
ARCHITECTURE_COUNTERPARTS = {"ldm-inpaint": "Stable Diffusion 1.5 inpainting (§4.3.4)", "ldm-blend": "— (zero-shot baseline)",
                             "cascade": "DeepFloyd IF (§4.3.3)", "unclip": "DALL-E 2 (§4.3.2)"}
_SUMMARY_KEYS = ("time_s", "peak_mib", "evalenc_inside", "evalenc_whole", "psnr_outside_raw", "ssim_outside_raw",
                 "ssim_outside_composite", "seam_added", "train_rmse", "train_rmse_raw")


def _architectures(ctx: ExperimentContext, config: InpaintingConfig, res: ExperimentResult) -> list:
    from .architectures import cascade_architecture, latent_architectures, unclip_architecture

    wanted = set(config.architectures)
    steps, sampler = config.run.steps, config.run.sampler
    archs = [a for a in latent_architectures(ctx.model, steps=steps, guidance=config.guidance, sampler=sampler)
             if a.name in wanted]
    if "ldm-inpaint" in wanted and ctx.model.inpaint_unet is None:
        res.skip("ldm-inpaint", f"model {ctx.model.name!r} has no inpainting U-Net (component 'ldm-inpaint')")
    if "cascade" in wanted:
        try:
            from ..models.cascade import load_cascade

            cascade = load_cascade(device=ctx.device)
            cascade.require("base", "sr")
            archs.append(cascade_architecture(cascade, steps=steps, guidance=config.guidance))
        except (ValueError, OSError) as err:
            res.skip("cascade", str(err))
    if "unclip" in wanted:
        try:
            from ..models.unclip import load_unclip

            unclip = load_unclip(device=ctx.device)
            unclip.prior_denoiser()
            archs.append(unclip_architecture(unclip, steps=steps))
        except (ValueError, OSError) as err:
            res.skip("unclip", str(err))
    return archs


@torch.no_grad()
def autoencoder_round_trip(model, image: Tensor) -> Tensor:
    """D(E(x)) of a latent model's autoencoder for images [B, 3, S, S] in [0, 1] at model size."""
    z = model.encode(image.to(model.device) * 2 - 1)
    return ((model.decode(z).float().cpu() + 1) / 2).clamp(0, 1)


def _heat(err: Tensor, vmax: float) -> Tensor:
    """|error| [B, H, W] -> magma colour map [B, 3, H, W] scaled to ``vmax``."""
    import matplotlib

    rgb = matplotlib.colormaps["magma"]((err / vmax).clamp(0, 1).numpy())[..., :3]
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float()


def _overlay(image: Tensor, mask: Tensor) -> Tensor:
    red = torch.tensor([1.0, 0.1, 0.1]).view(1, 3, 1, 1)
    return image * (1 - 0.5 * mask) + red * 0.5 * mask


def _round_trip_section(ctx: ExperimentContext, tasks, res: ExperimentResult) -> None:
    size = ctx.model.image_size
    rows, cells = [], []
    for t in tasks:
        x = to_model_size(t.image, size)
        m = (resize_mask(t.mask, (size, size), mode="area") > 0.5).float()
        y = autoencoder_round_trip(ctx.model, x)
        err = (y - x).abs().mean(1)
        cells.append([x, y, _heat(err, 0.25)])
        rows.append({"task": t.name, "psnr_whole": float(psnr(y, x)), "psnr_inside": float(psnr(y, x, mask=m, region="inside")),
                     "psnr_outside": float(psnr(y, x, mask=m, region="outside")), "max_abs_error": float(err.max())})
    res.figures.append(Figure("autoencoder_artefacts", "Autoencoder round trip D(E(x)) (Fig. 4.15)", image_grid(
        cells, row_labels=[t.name for t in tasks], col_labels=["original", "D(E(x))", "|error| (0 … 0.25)"]),
        "What a latent model changes outside the mask before any diffusion step; the composite removes it.", "grid"))
    res.tables.append(Table("autoencoder", "Autoencoder round-trip error (PSNR in dB)", list(rows[0]), rows))
    res.metrics["autoencoder_round_trip"] = {r["task"]: {k: v for k, v in r.items() if k != "task"} for r in rows}


#: The offline coherence measurement of the built-in model (:mod:`condiff.experiments.coherence`), shown cached.
COHERENCE_FILE = Path(__file__).resolve().parents[1] / "data" / "assets" / "experiments" / "inpaint_coherence.json"
_COHERENCE_COLS = ("lpips_like_fill", "psnr_fill", "ssim_fill", "seam_added", "evalenc_inside")


def _diff_cell(entry: dict, key: str) -> dict | None:
    d = entry.get(key, {}).get("minus_reference") if isinstance(entry.get(key), dict) else None
    return {"mean": d["mean"], "ci95": d["ci95"]} if d else None


def _coherence_tables(doc: dict, part: str, title: str, cols: Sequence[str], fx: str | None) -> list[Table]:
    ref = doc["reference"]
    rows, diffs = [], []
    for method, e in doc[part].items():
        row = {"method": method, "n": e["n"], **{c: e.get(c) for c in cols}}
        if "kid" in e:
            row.update({"kid": f"{e['kid']:.4f} ± {e['kid_std']:.4f}", "fd": e["fd"]})
        rows.append(row)
        if method != ref:
            d = {"method": f"{method} − {ref}", **{c: _diff_cell(e, c) for c in cols}}
            if "kid_minus_reference_ci95" in e and "kid" in doc[part].get(ref, {}):
                lo, hi = e["kid_minus_reference_ci95"]
                d["kid"] = f"{e['kid'] - doc[part][ref]['kid']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
            diffs.append(d)
    extra = ["kid", "fd"] if any("kid" in r for r in rows) else []
    how = (f"{doc['n_heldout']} held-out pictures (centre quarter removed, true caption as prompt)" if part == "heldout"
           else "the three thesis tasks × seeds (no ground truth: seam and prompt match only)")
    note = (f"Measured offline and shown cached: `{doc['command']}` ({doc['device']}, {doc['torch_threads']} thread(s), "
            f"{doc['steps']} steps; KID/FD against {doc['n_real']} other real held-out pictures, evaluation-encoder "
            f"features; FD is biased upwards at this n, compare KID).")
    t1 = Table(f"coherence_{part}", f"{title}: {how}", ["method", "n", *cols, *extra], rows, feature_extractor=fx,
               notes=[note])
    t2 = Table(f"coherence_{part}_paired", f"{title}: paired differences to {ref} (95 % bootstrap CI over pictures)",
               ["method", *cols, *(["kid"] if extra else [])], diffs, feature_extractor=fx)
    return [t1, t2]


def _coherence_section(res: ExperimentResult, path: Path = COHERENCE_FILE) -> None:
    """The built-in model's coherence measurement (model / blend / RePaint × blending modes), if shipped."""
    if not path.is_file():
        res.notes.append(f"No coherence measurement shipped ({path.name}); run `python -m condiff.experiments.coherence`.")
        return
    doc = json.loads(path.read_text(encoding="utf-8"))
    fx = doc.get("feature_extractor")
    res.tables += _coherence_tables(doc, "heldout", "Inpainting coherence of the built-in model", _COHERENCE_COLS, fx)
    res.tables += _coherence_tables(doc, "tasks", "Inpainting coherence on the thesis tasks",
                                    ("seam_added", "evalenc_inside"), fx)
    best = min(doc["heldout"].items(), key=lambda kv: kv[1]["lpips_like_fill"]["mean"])
    res.headlines.append(f"Coherence on {doc['n_heldout']} held-out pictures (cached measurement): the fill closest to "
                         f"the truth comes from {best[0]} (LPIPS-like {best[1]['lpips_like_fill']['mean']:.3f} vs "
                         f"{doc['heldout'][doc['reference']]['lpips_like_fill']['mean']:.3f} for {doc['reference']}).")
    res.metrics["coherence_cached"] = {"file": path.name, "heldout": doc["heldout"], "tasks": doc["tasks"],
                                       "n_heldout": doc["n_heldout"], "command": doc["command"]}


def _with_seams(comp, tasks, pictures: dict) -> list[dict[str, Any]]:
    """The comparison's rows plus the seam the composite adds and whether it is exact outside the mask."""
    rows = []
    for row in comp.rows:
        task = next(t for t in tasks if t.name == row["task"])
        raw, composite = comp.images[(row["architecture"], row["task"])]
        pictures.setdefault((row["architecture"], row["task"]), []).append((raw, composite))
        row["seam_added"] = float(seam_error(composite, task.mask) - seam_error(task.image, task.mask))
        near_comp, near_raw = nearest_training(torch.cat([composite, raw]))
        row.update({"train_rmse": near_comp["rmse"], "train_nearest": near_comp["nearest"],
                    "train_rmse_raw": near_raw["rmse"], "train_nearest_raw": near_raw["nearest"]})
        row["outside_exact"] = row["psnr_outside_composite"] == float("inf")
        rows.append(row)
    return rows


def run_inpainting(ctx: ExperimentContext, config: InpaintingConfig) -> ExperimentResult:
    """Run experiment 2 (see the module doc)."""
    from .architectures import Evaluator, experiment2_tasks

    t_start = time.perf_counter()
    res = ExperimentResult("inpainting", EXPERIMENT_TITLES["inpainting"], to_dict(config),
                           seeds=config.run.seeds)
    tasks = experiment2_tasks()
    _inputs_section(res, tasks)
    if getattr(ctx.model, "vae", None) is not None:
        _round_trip_section(ctx, tasks, res)
    if getattr(ctx.model, "name", "") == "builtin":
        _coherence_section(res)
    archs = _architectures(ctx, config, res)
    if not archs:
        res.skip("architecture comparison", "no architecture could be loaded")
        res.wall_s = time.perf_counter() - t_start
        return res
    evaluator = None
    if ctx.evalenc is not None:
        evaluator = Evaluator(ctx.evalenc.embed_images, ctx.evalenc.embed_texts, name=ctx.evalenc.name)
    else:
        res.skip("evalenc metrics", "no evaluation encoder: prompt scores inside the mask are not measured")
    rows, pictures = _compare(ctx, config.run.seeds, archs, tasks, evaluator, res)
    names = list(dict.fromkeys(r["architecture"] for r in rows))
    res.figures += _output_grids(pictures, names, tasks)
    per_arch, metrics, keys, methods = _architecture_tables(ctx, res, rows, names, tasks)
    mem_cols = ["architecture", "task", "seed", "train_rmse", "train_nearest", "train_rmse_raw", "train_nearest_raw"]
    res.tables.append(Table("memorisation", "Every generated picture and its nearest training picture",
                            mem_cols, [{k: r[k] for k in mem_cols} for r in rows]))
    res.metrics["memorisation"] = [{k: r[k] for k in mem_cols} for r in rows]
    _headlines(res, per_arch, metrics, names)
    res.measurements["architectures"] = {e["architecture"]: {"time_s": e.get("time_s"), "peak_mib": e.get("peak_mib"),
                                                             "memory_method": methods} for e in per_arch}
    panels = {COLUMN_LABELS[k]: [e.get(k) for e in per_arch] for k in ("evalenc_inside", "seam_added", "psnr_outside_raw",
                                                                       "time_s", "peak_mib") if k in keys}
    res.figures.append(Figure("architecture_bars", "Per-architecture quality and cost", plot_bars(
        names, panels, title="Inpainting: architectures (means, 95 % CI)"), "", "plot"))
    res.wall_s = time.perf_counter() - t_start
    res.measurements["seconds"] = round(res.wall_s, 2)
    return res


def _inputs_section(res: ExperimentResult, tasks) -> None:
    """The tasks' pictures and masks (Figs. 4.6/4.7), and the notes on the inputs and the architectures run."""
    res.figures.append(Figure("inputs", "Tasks: pictures and masks (Figs. 4.6/4.7)", image_grid(
        [[t.image for t in tasks], [_overlay(t.image, t.mask) for t in tasks]], row_labels=["picture", "mask (red)"],
        col_labels=[f"{t.name}: “{t.prompt}”" for t in tasks]), "Masks are exact (from the vector elements).", "image"))
    from .sketch import provenance_note

    res.notes.append(provenance_note())
    res.notes += memorisation_notes({t.name: t.image for t in tasks})
    res.notes.append("The thesis's DALL-E 2 ran through a paid API; condiff experiments never touch the network, so "
                     "the remote architecture is not run (its local counterpart is unclip).")


def _compare(ctx: ExperimentContext, seeds: list[int], archs: list, tasks, evaluator,
             res: ExperimentResult) -> tuple[list[dict[str, Any]], dict[tuple[str, str], list[tuple[Tensor, Tensor]]]]:
    """Every architecture on every task, one timed cell per (seed, architecture): the measured rows and the
    (raw, composite) pictures per (architecture, task)."""
    from .architectures import run_comparison

    rows: list[dict[str, Any]] = []
    pictures: dict[tuple[str, str], list[tuple[Tensor, Tensor]]] = {}
    timings = res.measurements.setdefault("cell_seconds", {})
    for seed in seeds:
        for arch in archs:
            with cell_timer(timings, f"{arch.name}, seed {seed} ({len(tasks)} tasks)", announce=not ctx.show_progress):
                comp = run_comparison([arch], tasks, evaluator=evaluator, seed=seed, device=ctx.device, warmup=False)
                rows += _with_seams(comp, tasks, pictures)
    return rows, pictures


def _output_grids(pictures: dict, names: list[str], tasks) -> list[Figure]:
    """The raw and the composited outputs: architectures × tasks, the seeds side by side in each cell."""
    def grid(which: int, title: str, fig: str, caption: str) -> Figure:
        cells = [[torch.cat([p[which] for p in pictures[(a, t.name)]]) for t in tasks] for a in names]
        return Figure(fig, title, image_grid(cells, row_labels=names, col_labels=[t.name for t in tasks]), caption)

    return [grid(0, "Raw outputs (Figs. 4.8, 4.12, 4.14)", "raw_grid",
                 "Rows: architectures; each cell: the seeds side by side. Pixels outside the mask may change."),
            grid(1, "Composited outputs (Figs. 4.13, 4.16)", "composite_grid",
                 "The original outside the mask, the generated pixels inside.")]


def _architecture_tables(ctx: ExperimentContext, res: ExperimentResult, rows: list[dict], names: list[str],
                         tasks) -> tuple[list[dict], dict, list[str], list[str]]:
    """The tables per architecture (pooled over tasks × seeds) and per architecture × task (over seeds) and the
    metrics; returns (per-architecture entries, metrics, the measured keys, the memory methods)."""
    fx = ctx.evalenc_name
    keys = [k for k in _SUMMARY_KEYS if any(isinstance(r.get(k), (int, float)) and r.get(k) is not None for r in rows)]
    per_arch, metrics = [], {}
    for a in names:
        sel = [r for r in rows if r["architecture"] == a]
        entry = {"architecture": a, "thesis counterpart": ARCHITECTURE_COUNTERPARTS.get(a, ""),
                 "params (total)": sel[0]["params_total"], "outside exact after composite": all(r["outside_exact"] for r in sel)}
        entry.update({k: summarize([r[k] for r in sel if r.get(k) is not None]) for k in keys})
        per_arch.append(entry)
        metrics[a] = {k: entry[k] for k in keys if k not in ("time_s", "peak_mib")}
        metrics[a]["outside_exact_after_composite"] = entry["outside exact after composite"]
        metrics[a]["per_task"] = {t.name: {k: summarize([r[k] for r in sel if r["task"] == t.name and r.get(k) is not None])
                                           for k in keys if k not in ("time_s", "peak_mib")} for t in tasks}
    table = Table("architectures", "Architectures over the three tasks (means over tasks × seeds)",
                  ["architecture", "thesis counterpart", "params (total)"] + keys + ["outside exact after composite"],
                  per_arch, feature_extractor=fx)
    methods = sorted({r["memory_method"] for r in rows})
    table.notes.append(f"time_s: seconds per image; peak_mib: resident weights + activation peak ({'; '.join(methods)}). "
                       "seam_added: seam error of the composite minus that of the original (0 = invisible border).")
    res.tables.append(table)
    per_task = [{"architecture": a, "task": t.name,
                 **{k: summarize([r[k] for r in rows if r["architecture"] == a and r["task"] == t.name
                                  and r.get(k) is not None]) for k in keys}} for a in names for t in tasks]
    res.tables.append(Table("architectures_per_task", "Per architecture and task (means over seeds)",
                            ["architecture", "task"] + keys, per_task, feature_extractor=fx))
    res.metrics["architectures"] = metrics
    return per_arch, metrics, keys, methods


def _headlines(res: ExperimentResult, per_arch: list[dict], metrics: dict, names: list[str]) -> None:
    """One headline per architecture, and the autoencoder round trip's share of the damage outside the mask."""
    for e in per_arch:
        res.headlines.append(
            f"{e['architecture']}: " + ", ".join(f"{COLUMN_LABELS.get(k, k)} {fmt_summary(e[k])}" for k in
                                                 ("evalenc_inside", "seam_added", "psnr_outside_raw", "time_s") if k in e)
            + f"; outside the mask exact after the composite: {'yes' if e['outside exact after composite'] else 'no'}")
    ae = res.metrics.get("autoencoder_round_trip")
    if ae:
        mean_out = sum(v["psnr_outside"] for v in ae.values()) / len(ae)
        raw = [metrics[a]["psnr_outside_raw"]["mean"] for a in names if a.startswith("ldm") and metrics[a]["psnr_outside_raw"]["mean"] is not None]
        res.headlines.append(f"Autoencoder round trip alone: PSNR outside the mask {mean_out:.1f} dB"
                             + (f" (latent models' raw outputs there: {', '.join(f'{v:.1f}' for v in raw)} dB)" if raw else "")
                             + " — the latent models' damage outside the mask (Fig. 4.15), which the composite removes.")
