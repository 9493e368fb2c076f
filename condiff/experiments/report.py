"""The experiment report: one self-contained HTML file plus a machine-readable ``results.json``.

The HTML file embeds every figure as a base64 PNG (it can be mailed or archived as one file); the
same PNGs are also written to ``figures/`` beside it. Each experiment section holds its image grids
(the thesis's figures), matplotlib plots (faithfulness–realism over t0, adherence over γ,
per-method bars), tables with bootstrap 95 % intervals (each naming its feature extractor), what
was skipped and why, and the exact config and seeds. The header records the condiff, torch and
Python versions, the device, the command and the machine load.

``results.json`` separates ``metrics`` (deterministic: the same seed on the same device gives the
same numbers bit for bit) from ``measurements`` (wall time, memory), which vary from run to run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image

from ..io import atomic_path
from .context import ExperimentResult, Figure, Table, fmt_summary

__all__ = ["COLUMN_LABELS", "run_info", "jsonable", "results_document", "render_html", "write_report", "plot_tradeoff", "plot_curves",
           "plot_bars", "figure_to_image"]


# --------------------------------------------------------------------------- run information


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_info(device: Any = "cpu", command: str | None = None) -> dict[str, Any]:
    """Versions, device and machine state for the report header."""
    import numpy
    import torch

    from .. import __version__

    dev = str(device)
    name = torch.cuda.get_device_name(torch.device(dev)) if dev.startswith("cuda") and torch.cuda.is_available() \
        else _cpu_name()
    info = {
        "condiff": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "numpy": numpy.__version__, "platform": platform.platform(), "device": dev, "device_name": name,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command or " ".join(sys.argv),
    }
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        info["load_average"] = None
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


# --------------------------------------------------------------------------- plots


def figure_to_image(fig) -> Image.Image:
    """A matplotlib figure as a PIL image (closed afterwards)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    buf.seek(0)
    img = Image.open(buf)
    img.load()
    return img.convert("RGB")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _mean_err(s: Mapping[str, Any] | None) -> tuple[float, float, float]:
    """(mean, lower error, upper error) for error bars; NaN when the value is missing."""
    if not s or s.get("mean") is None or not math.isfinite(float(s["mean"])):
        return math.nan, 0.0, 0.0
    m = float(s["mean"])
    if s.get("ci95"):
        lo, hi = s["ci95"]
        return m, max(m - lo, 0.0), max(hi - m, 0.0)
    return m, 0.0, 0.0


def plot_tradeoff(points: Sequence[tuple[str, Mapping, Mapping]], *, xlabel: str, ylabel: str, title: str) -> Image.Image:
    """A trade-off curve: (label, x summary, y summary) per point, in order, with 95 % CI error bars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    xs, ys = [], []
    for label, sx, sy in points:
        x, xl, xh = _mean_err(sx)
        y, yl, yh = _mean_err(sy)
        xs.append(x)
        ys.append(y)
        ax.errorbar([x], [y], xerr=[[xl], [xh]], yerr=[[yl], [yh]], fmt="o", color="tab:blue", capsize=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.plot(xs, ys, "-", color="tab:blue", alpha=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return figure_to_image(fig)


def plot_curves(x: Sequence[float], series: Mapping[str, Sequence[Mapping]], *, xlabel: str, title: str,
                ylabels: Mapping[str, str] | None = None, log_x: bool = False) -> Image.Image:
    """One panel per series: mean over ``x`` with a shaded 95 % CI band."""
    plt = _plt()
    n = len(series)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, (name, summaries) in zip(axes[0], series.items()):
        stats = [_mean_err(s) for s in summaries]
        m = [s[0] for s in stats]
        ax.plot(x, m, "o-", color="tab:blue")
        ax.fill_between(x, [a - b for a, b, _ in stats], [a + c for a, _, c in stats], alpha=0.2, color="tab:blue")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel((ylabels or {}).get(name, name))
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return figure_to_image(fig)


def plot_bars(categories: Sequence[str], panels: Mapping[str, Sequence[Mapping | None]], *, title: str,
              log_panels: Sequence[str] = ()) -> Image.Image:
    """One bar panel per metric (``panels[metric][i]`` is the summary of ``categories[i]``), 95 % CI whiskers."""
    plt = _plt()
    n = len(panels)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.0 * rows), squeeze=False)
    for k, (ax, (metric, summaries)) in enumerate(zip(axes.flat, panels.items())):
        stats = [_mean_err(s) for s in summaries]
        pos = list(range(len(categories)))
        ax.bar(pos, [0 if math.isnan(s[0]) else s[0] for s in stats],
               yerr=[[s[1] for s in stats], [s[2] for s in stats]], capsize=3, color=f"C{k % 10}")
        for p, s, raw in zip(pos, stats, summaries):
            if math.isnan(s[0]):
                exact = bool(raw) and raw.get("mean") in (math.inf, "inf")
                ax.text(p, 0, "∞" if exact else "n/a", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(pos)
        ax.set_xticklabels(categories, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
        if metric in log_panels:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return figure_to_image(fig)


# --------------------------------------------------------------------------- JSON


def jsonable(v: Any) -> Any:
    """Plain JSON values: tensors to lists, inf to "inf", NaN to None, tuples to lists."""
    import numpy as np
    import torch

    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, torch.Tensor):
        return jsonable(v.tolist())
    if isinstance(v, np.generic):
        return jsonable(v.item())
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(v, Path):
        return str(v)
    return v


def _figure_file(exp: str, fig: Figure) -> str:
    return f"figures/{exp}_{fig.name}.png"


def results_document(results: Sequence[ExperimentResult], info: Mapping[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"run": dict(info), "experiments": {}}
    for r in results:
        doc["experiments"][r.name] = {
            "title": r.title, "config": r.config, "seeds": r.seeds, "metrics": r.metrics,
            "measurements": {**r.measurements, "wall_s": round(r.wall_s, 2)},
            "tables": [t.to_dict() for t in r.tables],
            "figures": [{"name": f.name, "title": f.title, "kind": f.kind, "file": _figure_file(r.name, f),
                         "caption": f.caption} for f in r.figures],
            "headlines": r.headlines, "notes": r.notes, "skipped": r.skipped,
        }
    return jsonable(doc)


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0}
.fx{font-weight:normal;color:#555;font-size:.9em}figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#444}.skip{background:#fff6e0;border-left:4px solid #f0a000;padding:.5em 1em}
.head{background:#eefbea;border-left:4px solid #3a9d23;padding:.5em 1em;margin-bottom:.5em}
.note{background:#eef5ff;border-left:4px solid #3a7bd5;padding:.5em 1em}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em}
.meta td{text-align:left}
"""


def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(v: Any) -> str:
    if isinstance(v, Mapping) and "mean" in v:
        return html.escape(fmt_summary(v))
    if isinstance(v, float):
        if math.isinf(v):
            return "∞"
        if math.isnan(v):
            return "n/a"
        return f"{v:.4g}"
    if v is None:
        return "n/a"
    if isinstance(v, (list, tuple)):
        return html.escape(", ".join(str(x) for x in v))
    return html.escape(str(v))


#: Column headers of the report for the metric keys of results.json (arrows: which way is better).
COLUMN_LABELS = {
    "ssim_sketch": "SSIM to sketch ↑", "lpips_like_sketch": "LPIPS-like to sketch ↓",
    "lpips_like_reference": "LPIPS-like to original ↓", "evalenc_prompt": "evalenc prompt score ↑",
    "evalenc_reference": "evalenc sim. to original ↑", "adherence": "adherence ↑",
    "time_s": "s / image", "peak_mib": "peak MiB", "evalenc_inside": "evalenc prompt score, inside mask ↑",
    "evalenc_whole": "evalenc prompt score, whole ↑", "psnr_outside_raw": "PSNR outside, raw (dB) ↑",
    "ssim_outside_raw": "SSIM outside, raw ↑", "ssim_outside_composite": "SSIM outside, composite ↑",
    "seam_added": "seam added by composite ↓", "subject_fidelity": "subject fidelity ↑",
    "prompt_fidelity": "prompt fidelity ↑", "lpips_like_subject": "LPIPS-like to nearest subject picture ↓",
    "class_drift": "class drift ↓", "class_drift_lpips_like": "class drift, LPIPS-like ↓", "train_s": "training s",
    "train_peak_mib": "training peak MiB", "file_bytes": "file size (bytes)", "ssim_input": "SSIM to input ↑",
    "lpips_like_input": "LPIPS-like to input ↓",
    "train_rmse": "RMSE to nearest training picture (16×16) ↑", "train_rmse_raw": "raw output: RMSE to nearest training picture ↑",
    "train_nearest": "nearest training picture", "train_nearest_raw": "raw output: nearest training picture",
    "lpips_like_fill": "LPIPS-like of the fill to the truth ↓", "psnr_fill": "PSNR of the fill (dB) ↑",
    "ssim_fill": "SSIM of the fill ↑", "kid": "KID of composites to real pictures ↓",
    "fd": "Fréchet distance of composites to real pictures ↓",
}
_NO_FEATURES = "none (pixel-space metrics only)"


def _table_html(t: Table) -> str:
    fx = f'<br><span class="fx">features: {html.escape(t.feature_extractor or _NO_FEATURES)}</span>'
    head = "".join(f'<th title="{html.escape(c)}">{html.escape(COLUMN_LABELS.get(c, c))}</th>' for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in t.columns) + "</tr>" for row in t.rows)
    notes = "".join(f"<p class=\"fx\">{html.escape(n)}</p>" for n in t.notes)
    return (f'<table id="{html.escape(t.name)}"><caption>{html.escape(t.title)}{fx}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}")


def _section(r: ExperimentResult) -> str:
    parts = [f'<section id="{html.escape(r.name)}"><h2>{html.escape(r.title)}</h2>',
             f"<p>seeds {html.escape(', '.join(map(str, r.seeds)) or 'n/a')} · wall time {r.wall_s:.1f} s</p>"]
    if r.headlines:
        parts.append('<div class="head"><b>Headline numbers</b><ul>'
                     + "".join(f"<li>{html.escape(s)}</li>" for s in r.headlines) + "</ul></div>")
    if r.skipped:
        parts.append('<div class="skip"><b>Skipped</b><ul>' + "".join(f"<li>{html.escape(s)}</li>" for s in r.skipped)
                     + "</ul></div>")
    if r.notes:
        parts.append('<div class="note"><ul>' + "".join(f"<li>{html.escape(s)}</li>" for s in r.notes) + "</ul></div>")
    for f in r.figures:
        parts.append(f'<figure id="{html.escape(r.name)}-{html.escape(f.name)}"><h3>{html.escape(f.title)}</h3>'
                     f'<img alt="{html.escape(f.title)}" src="data:image/png;base64,{_png_b64(f.image)}">'
                     f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
    for t in r.tables:
        parts.append(_table_html(t))
    if r.measurements:
        parts.append("<details><summary>Measurements (time, memory: vary between runs)</summary><pre>"
                     + html.escape(json.dumps(jsonable(r.measurements), indent=1)) + "</pre></details>")
    parts.append("<details><summary>Exact config</summary><pre>" + html.escape(json.dumps(jsonable(r.config), indent=1))
                 + "</pre></details></section>")
    return "\n".join(parts)


def render_html(results: Sequence[ExperimentResult], info: Mapping[str, Any], *, title: str = "condiff experiments") -> str:
    meta = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_cell(v)}</td></tr>" for k, v in info.items())
    nav = " · ".join(f'<a href="#{html.escape(r.name)}">{html.escape(r.title)}</a>' for r in results)
    body = "\n".join(_section(r) for r in results)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            "<p>The thesis's three experiments (chapter 4), re-run and measured by condiff. Learned-feature "
            "scores come from the feature extractor named under each table; intervals are 95 % percentile "
            "bootstrap intervals over images (and tasks/prompts where pooled).</p>"
            f"{_clock_line(info)}"
            f'<table class="meta"><caption>Run</caption>{meta}</table><p>{nav}</p>{body}</body></html>')


def _clock_line(info: Mapping[str, Any]) -> str:
    """Wall time, CPU time, threads and machine load of the run, in one sentence (every cell is always made)."""
    if "wall_s" not in info:
        return ""
    load = [info.get("load_average"), info.get("load_average_end")]
    loads = " → ".join(f"{v[0]:.2f}" for v in load if v)
    return (f"<p><b>Made in {info['wall_s']} s wall-clock ({info.get('cpu_s', 'n/a')} s CPU) with "
            f"{info.get('torch_threads', 'n/a')} torch thread(s) on {info.get('cpu_count', 'n/a')} cores"
            + (f", 1-minute load average {loads} (start → end)" if loads else "")
            + ".</b> Every cell of every experiment is made whatever the clock says; on a busy machine the run "
            "takes longer, it never drops content.</p>")


def write_report(results: Sequence[ExperimentResult], out_dir: str | Path, info: Mapping[str, Any], *,
                 title: str = "condiff experiments") -> tuple[Path, Path]:
    """Write ``report.html``, ``results.json`` and ``figures/*.png`` into ``out_dir`` (atomically each)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        for f in r.figures:
            with atomic_path(out / _figure_file(r.name, f)) as tmp:
                f.image.save(tmp, format="PNG")
    report = out / "report.html"
    with atomic_path(report) as tmp:
        tmp.write_text(render_html(results, info, title=title), encoding="utf-8")
    results_json = out / "results.json"
    with atomic_path(results_json) as tmp:
        tmp.write_text(json.dumps(results_document(results, info), indent=1, ensure_ascii=False), encoding="utf-8")
    return report, results_json
