"""X/Y/Z parameter sweeps: an image grid with labelled rows/columns plus a metric table.

The "X/Y/Z plot" of AUTOMATIC1111's web UI, with measurements added. Up to three :class:`Axis`
objects name a pipeline parameter and its values; X runs along the columns, Y down the rows and Z
over separate grids. Every cell renders ``images_per_cell`` images (image i with seed s + i, s the
base seed unless ``seed`` is itself an axis), so all cells share their noise and differ only in the
swept parameter, and a rerun gives the same pictures bit for bit.

:func:`pipeline_renderer` turns a model and one of condiff's pipelines (text2img, sdedit, control,
inpaint) into the ``render(params) -> images`` function :func:`run_sweep` calls; any parameter of
:data:`SWEEP_PARAMETERS` can be an axis (strength, guidance, sampler, steps, ControlNet type and
scale, LoRA weight, seed, …). Metrics are ``name -> fn(images, params) -> [n]`` per-image values;
the table shows their means with bootstrap 95 % intervals (:func:`condiff.experiments.context.summarize`).

Grids are drawn with Pillow in DejaVu Sans (shipped with matplotlib), PIL's default font otherwise.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .context import Table, fmt_summary, summarize

__all__ = ["Axis", "SWEEP_PARAMETERS", "PIPELINE_PARAMETERS", "parse_axis", "SweepCell", "SweepResult", "run_sweep",
           "pipeline_renderer", "image_grid"]

#: Sweepable parameter -> the type its values are parsed to.
SWEEP_PARAMETERS: dict[str, type] = {
    "prompt": str, "negative": str, "guidance": float, "steps": int, "sampler": str, "schedule": str, "seed": int,
    "strength": float, "control_type": str, "control_scale": float, "lora_weight": float, "method": str,
    "blend": str,
}
_COMMON = ("prompt", "negative", "guidance", "steps", "sampler", "schedule", "seed", "lora_weight")
#: The parameters each pipeline understands.
PIPELINE_PARAMETERS: dict[str, tuple[str, ...]] = {
    "text2img": _COMMON,
    "sdedit": _COMMON + ("strength",),
    "control": _COMMON + ("control_type", "control_scale"),
    "inpaint": _COMMON + ("method", "blend"),
}
MAX_AXES = 3


# --------------------------------------------------------------------------- axes


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


@dataclass(frozen=True)
class Axis:
    """A swept parameter and its values (in order)."""

    name: str
    values: tuple

    def __post_init__(self):
        if self.name not in SWEEP_PARAMETERS:
            raise ValueError(f"cannot sweep {self.name!r}; sweepable parameters: {', '.join(SWEEP_PARAMETERS)}")
        vals = tuple(self.values)
        if not vals:
            raise ValueError(f"axis {self.name!r} has no values; give at least one, e.g. {self.name}=1,2")
        kind = SWEEP_PARAMETERS[self.name]
        try:
            vals = tuple(kind(v) for v in vals)
        except (TypeError, ValueError):
            raise ValueError(f"axis {self.name!r} needs {kind.__name__} values, got {list(self.values)}") from None
        object.__setattr__(self, "values", vals)

    def labels(self) -> list[str]:
        return [f"{self.name}={_fmt_value(v)}" for v in self.values]

    def __len__(self) -> int:
        return len(self.values)


def _expand_range(text: str, kind: type) -> list:
    """``"10:50:10"`` -> 10, 20, …, 50 (inclusive; numbers only)."""
    parts = text.split(":")
    if len(parts) != 3 or kind not in (int, float):
        raise ValueError(f"a range is start:stop:step of numbers, got {text!r}")
    start, stop, step = (kind(p) for p in parts)
    if step == 0 or (stop - start) * step < 0:
        raise ValueError(f"range {text!r} never reaches its end; check the sign of the step")
    out, k = [], 0
    while True:
        v = start + k * step
        if (step > 0 and v > stop + abs(step) * 1e-9) or (step < 0 and v < stop - abs(step) * 1e-9):
            return out
        out.append(round(v, 10) if kind is float else v)
        k += 1


def parse_axis(spec: str) -> Axis:
    """``"guidance=1,2.5,5"`` or ``"steps=10:50:10"`` (inclusive range) -> :class:`Axis`."""
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep or not rest.strip():
        raise ValueError(f"an axis is NAME=V1,V2,… (e.g. guidance=1,5,10), got {spec!r}")
    if name not in SWEEP_PARAMETERS:
        raise ValueError(f"cannot sweep {name!r}; sweepable parameters: {', '.join(SWEEP_PARAMETERS)}")
    kind = SWEEP_PARAMETERS[name]
    rest = rest.strip()
    if ":" in rest and "," not in rest and kind in (int, float):
        return Axis(name, tuple(_expand_range(rest, kind)))
    return Axis(name, tuple(v.strip() for v in rest.split(",") if v.strip()))


# --------------------------------------------------------------------------- running


@dataclass
class SweepCell:
    """One grid cell: its position (x, y, z), the full parameters, images [n, 3, H, W] and per-image metrics."""

    index: tuple[int, int, int]
    params: dict[str, Any]
    images: Tensor
    metrics: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class SweepResult:
    """The rendered cells in order (X fastest)."""

    axes: list[Axis]
    base: dict[str, Any]
    cells: list[SweepCell]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(columns, rows, grids) = (|X|, |Y|, |Z|), 1 for a missing axis."""
        sizes = [len(a) for a in self.axes] + [1] * (MAX_AXES - len(self.axes))
        return sizes[0], sizes[1], sizes[2]

    @property
    def total(self) -> int:
        nx, ny, nz = self.shape
        return nx * ny * nz

    @property
    def complete(self) -> bool:
        return len(self.cells) == self.total

    def cell(self, x: int, y: int = 0, z: int = 0) -> SweepCell | None:
        """The cell at (x, y, z), or None outside the grid."""
        nx, ny, _ = self.shape
        k = (z * ny + y) * nx + x
        return self.cells[k] if k < len(self.cells) else None

    def _images(self, x: int, y: int = 0, z: int = 0) -> Tensor:
        return self.cell(x, y, z).images

    @property
    def metric_names(self) -> list[str]:
        return list(dict.fromkeys(k for c in self.cells for k in c.metrics))

    def grids(self, title: str | None = None) -> list[Image.Image]:
        """One labelled grid per Z value. With a single axis its values run down the rows and the
        images of a cell across the columns (labelled by seed)."""
        if not self.cells:
            raise ValueError("no cell of this sweep was rendered")
        nx, ny, nz = self.shape
        out = []
        for z in range(nz):
            ztitle = " · ".join(filter(None, [title, self.axes[2].labels()[z] if len(self.axes) > 2 else None]))
            if len(self.axes) == 1:
                rows = [self._images(x) for x in range(nx)]
                cells = [[im[i:i + 1] for i in range(im.shape[0])] for im in rows]
                seeds = _cell_seeds(self.cells[0])
                out.append(image_grid(cells, row_labels=self.axes[0].labels(), col_labels=[f"seed {s}" for s in seeds],
                                      title=ztitle or None))
            else:
                cells = [[self._images(x, y, z) for x in range(nx)] for y in range(ny)]
                out.append(image_grid(cells, row_labels=self.axes[1].labels(), col_labels=self.axes[0].labels(),
                                      title=ztitle or None))
        return out

    def summary(self) -> list[dict[str, Any]]:
        """Per cell: the axis values and :func:`summarize` of every metric."""
        rows = []
        for c in self.cells:
            row = {a.name: c.params[a.name] for a in self.axes}
            row.update({m: summarize(v) for m, v in c.metrics.items()})
            rows.append(row)
        return rows

    def table(self, name: str, title: str, feature_extractor: str | None = None) -> Table:
        return Table(name, title, [a.name for a in self.axes] + self.metric_names, self.summary(),
                     feature_extractor=feature_extractor)

    def markdown(self) -> str:
        cols = [a.name for a in self.axes] + self.metric_names
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in self.summary():
            lines.append("| " + " | ".join(fmt_summary(row[c]) if isinstance(row.get(c), dict) else _fmt_value(row.get(c))
                                           for c in cols) + " |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"axes": [{"name": a.name, "values": list(a.values)} for a in self.axes], "base": dict(self.base),
                "cells": [{"index": list(c.index), "params": c.params, "metrics": c.metrics} for c in self.cells],
                "summary": self.summary()}


def _cell_seeds(cell: SweepCell) -> list[int]:
    s = int(cell.params.get("seed", 0))
    return [s + i for i in range(cell.images.shape[0])]


def _check_axes(axes: Sequence[Axis]) -> list[Axis]:
    axes = list(axes)
    if not 1 <= len(axes) <= MAX_AXES:
        raise ValueError(f"a sweep has 1 to {MAX_AXES} axes (X, Y, Z), got {len(axes)}")
    names = [a.name for a in axes]
    if len(set(names)) != len(names):
        raise ValueError(f"each parameter may be swept on one axis only, got {names}")
    return axes


def run_sweep(render: Callable[[dict[str, Any]], Tensor], axes: Sequence[Axis], base: Mapping[str, Any] | None = None,
              metrics: Mapping[str, Callable[[Tensor, dict[str, Any]], Tensor]] | None = None, *,
              show_progress: bool = False, desc: str = "sweep") -> SweepResult:
    """Render every combination of the axes' values (X fastest) and measure it.
    """
    axes = _check_axes(axes)
    base = dict(base or {})
    clash = [a.name for a in axes if a.name in base]
    if clash:
        raise ValueError(f"parameters {clash} are both fixed and swept; drop them from the fixed parameters")
    combos = list(itertools.product(*[range(len(a)) for a in reversed(axes)]))  # last axis slowest
    from tqdm.auto import tqdm

    cells = []
    for idx in tqdm(combos, desc=desc, disable=not show_progress, leave=False):
        pos = tuple(reversed(idx)) + (0,) * (MAX_AXES - len(axes))
        params = dict(base)
        params.update({a.name: a.values[i] for a, i in zip(axes, pos)})
        images = render(params)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"render must return images [n, 3, H, W], got {tuple(images.shape)}")
        images = images.float().cpu().clamp(0, 1)
        values = {}
        for name, fn in (metrics or {}).items():
            v = fn(images, params)
            if v is not None:
                values[name] = [float(x) for x in torch.as_tensor(v).flatten().tolist()]
        cells.append(SweepCell(pos, params, images, values))
    return SweepResult(axes, base, cells)


# --------------------------------------------------------------------------- pipelines


def pipeline_renderer(model, pipeline: str, *, images_per_cell: int = 1, image: Tensor | None = None,
                      mask: Tensor | None = None, lora=None, controlnets: Mapping[str, Any] | None = None,
                      show_progress: bool = False) -> Callable[[dict[str, Any]], Tensor]:
    """``render(params) -> images [n, 3, H, W]`` running ``pipeline`` of condiff on ``model``.

    ``image``: the input [1, 3, H, W] in [0, 1] of sdedit / control / inpaint; ``mask`` for inpaint;
    ``lora``: an attached :class:`condiff.personalize.LoRANetwork` whose weight ``lora_weight`` sets.
    """
    if pipeline not in PIPELINE_PARAMETERS:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose one of {', '.join(PIPELINE_PARAMETERS)}")
    if pipeline in ("sdedit", "control", "inpaint") and image is None:
        raise ValueError(f"the {pipeline} pipeline needs an input image (--image PATH)")
    if pipeline == "inpaint" and mask is None:
        raise ValueError("the inpaint pipeline needs a mask (--mask PATH)")
    if images_per_cell < 1:
        raise ValueError(f"images_per_cell must be ≥ 1, got {images_per_cell}")
    valid = PIPELINE_PARAMETERS[pipeline]
    n = int(images_per_cell)

    def render(params: dict[str, Any]) -> Tensor:
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ValueError(f"the {pipeline} pipeline has no parameter(s) {unknown}; it takes {', '.join(valid)}")
        if "prompt" not in params:
            raise ValueError("a sweep needs a prompt (fixed or as an axis)")
        if "lora_weight" in params:
            if lora is None:
                raise ValueError("lora_weight needs a LoRA file (--lora FILE)")
            lora.weight = float(params["lora_weight"])
        kw = dict(negative=params.get("negative", ""), guidance=params.get("guidance"), steps=params.get("steps"),
                  sampler=params.get("sampler", "dpmpp_2m"), schedule=params.get("schedule"),
                  seed=int(params.get("seed", 0)), show_progress=show_progress)
        prompt = params["prompt"]
        if pipeline == "text2img":
            from ..pipelines.text2img import generate

            return generate(model, prompt, batch_size=n, **kw).images
        if pipeline == "sdedit":
            from ..pipelines.text2img import sdedit

            return sdedit(model, image.expand(n, -1, -1, -1), prompt, strength=float(params.get("strength", 0.6)),
                          **kw).images
        if pipeline == "control":
            from ..pipelines.control import control

            kind = params.get("control_type")
            if kind is None:
                raise ValueError("the control pipeline needs control_type (fixed or as an axis)")
            given = {kind: controlnets[kind]} if controlnets and kind in controlnets else None
            return control(model, image, prompt, kinds=[kind], scales=float(params.get("control_scale", 1.0)),
                           controlnets=given, batch_size=n, **kw).images
        from ..pipelines.inpaint import inpaint

        return inpaint(model, image.expand(n, -1, -1, -1), mask, prompt, method=params.get("method", "model"),
                       blend=params.get("blend", "alpha"), **kw).images

    return render


# --------------------------------------------------------------------------- drawing


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        import matplotlib

        path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
        return ImageFont.truetype(path, size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def _to_pil(images: Tensor, cell: int) -> Image.Image:
    """A horizontal strip of the images [n, 3, H, W], each scaled to height ``cell``."""
    arr = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    tiles = [Image.fromarray(a) for a in arr]
    h, w = tiles[0].height, tiles[0].width
    tw = max(1, round(w * cell / h))
    strip = Image.new("RGB", (tw * len(tiles), cell), "white")
    for i, t in enumerate(tiles):
        strip.paste(t.resize((tw, cell), Image.Resampling.NEAREST if h < cell else Image.Resampling.LANCZOS), (i * tw, 0))
    return strip


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy line breaks at spaces and after '=' so that each line fits ``width`` pixels."""
    pieces = re.findall(r"[^\s=]*=|[^\s=]+\s*|\s+", text)
    lines, cur = [], ""
    for piece in pieces:
        if cur and draw.textlength((cur + piece).rstrip(), font=font) > width:
            lines.append(cur.rstrip())
            cur = piece.lstrip()
        else:
            cur += piece
    if cur.strip():
        lines.append(cur.rstrip())
    return lines or [""]


def image_grid(cells: Sequence[Sequence[Tensor]], *, row_labels: Sequence[str], col_labels: Sequence[str],
               title: str | None = None, min_cell: int = 96, pad: int = 4, font_size: int = 13) -> Image.Image:
    """Rows × columns of image strips ([n, 3, H, W] each) with labels left and on top."""
    if not cells or not cells[0]:
        raise ValueError("an image grid needs at least one cell")
    if len(row_labels) != len(cells) or any(len(r) != len(col_labels) for r in cells):
        raise ValueError(f"labels ({len(row_labels)} rows, {len(col_labels)} columns) do not fit the cells "
                         f"({len(cells)} rows of {[len(r) for r in cells]})")
    height = max(min_cell, max(int(c.shape[-2]) for r in cells for c in r))
    strips = [[_to_pil(c, height) for c in r] for r in cells]
    col_w = [max(strips[r][c].width for r in range(len(strips))) for c in range(len(col_labels))]
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = font_size + 3
    row_w = min(220, max(math.ceil(probe.textlength(s, font=font)) for s in row_labels) + 2 * pad)
    col_lines = [_wrap(probe, s, font, w - 2) for s, w in zip(col_labels, col_w)]
    head = max(len(x) for x in col_lines) * line_h + pad
    top = (line_h + 2 * pad) if title else 0
    width = row_w + sum(col_w) + pad * (len(col_w) + 1)
    total_h = top + head + len(strips) * (height + pad)
    img = Image.new("RGB", (width, total_h), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((pad, pad), title, fill="black", font=_font(font_size + 2))
    x = row_w + pad
    for lines, w in zip(col_lines, col_w):
        for k, ln in enumerate(lines):
            draw.text((x + (w - draw.textlength(ln, font=font)) / 2, top + k * line_h), ln, fill="black", font=font)
        x += w + pad
    y = top + head
    for label, row in zip(row_labels, strips):
        lines = _wrap(draw, label, font, row_w - 2 * pad)
        y0 = y + (height - len(lines) * line_h) / 2
        for k, ln in enumerate(lines):
            draw.text((pad, y0 + k * line_h), ln, fill="black", font=font)
        x = row_w + pad
        for strip, w in zip(row, col_w):
            img.paste(strip, (x, y))
            x += w + pad
        y += height + pad
    return img
