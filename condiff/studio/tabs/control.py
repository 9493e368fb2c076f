"""ControlNet: upload a picture, preview every preprocessor's condition map, edit a map on a canvas,
stack up to :data:`UNITS` units with scale and start/end (``condiff control``)."""

from __future__ import annotations

import gradio as gr
import numpy as np

from ...errors import InputError
from ...images import load_image, to_pil
from ...pipelines.control import control, prepare_condition
from ...preprocess import list_preprocessors
from ...server.runner import sampler_callback
from ..canvas import editor_picture, editor_value
from ..runner import JobPanel, guarded, page_errors
from .common import (Context, PromptBox, ResultsBox, SamplingBox, check_prompt, controlnets, save_conditions,
                     total_steps)
from .sketch import sketch_canvas

__all__ = ["build", "UNITS", "SOURCES"]

UNITS = 3
#: where a unit's condition comes from
SOURCES = ("preprocess the picture", "the edited map (as is)")


class Unit:
    """One ControlNet unit's widgets."""

    def __init__(self, i: int, kinds: list[str]):
        with gr.Group():
            with gr.Row():
                self.enabled = gr.Checkbox(i == 0, label=f"Unit {i + 1}", scale=0, min_width=90,
                                           elem_id=f"cd-control-unit{i}-on")
                self.kind = gr.Dropdown(kinds, value=kinds[min(i, len(kinds) - 1)], label="Type",
                                        elem_id=f"cd-control-unit{i}-type")
                self.source = gr.Dropdown(list(SOURCES), value=SOURCES[0], label="Condition")
            with gr.Row():
                self.scale = gr.Slider(0, 2, value=1.0, step=0.05, label="Scale")
                self.start = gr.Slider(0, 1, value=0.0, step=0.05, label="Start (0 = noise)")
                self.end = gr.Slider(0, 1, value=1.0, step=0.05, label="End (1 = clean)")

    @property
    def inputs(self) -> list:
        return [self.enabled, self.kind, self.source, self.scale, self.start, self.end]


def _picture(ctx: Context, arr):
    """The uploaded picture (a numpy array) as an image tensor, under the server's ``--max-image-pixels``."""
    if arr is None:
        raise InputError("no picture: upload the picture to take conditions from first")
    return load_image(arr, max_pixels=ctx.limits.max_image_pixels)


def _preview_job(ctx: Context, arr, kinds: list[str], size: int, maps) -> tuple:
    """(work, done) of "Preview every condition map": each preprocessor's map of the picture, shown in ``maps``."""
    img = _picture(ctx, arr)

    def work(progress):
        out = []
        for i, k in enumerate(kinds):
            out.append((k, prepare_condition(img, k, size=(size, size))))
            progress.update(i + 1, len(kinds), out[-1][1][:1])
        return out

    def done(out):
        return {maps: [(to_pil(c[:1]), k) for k, c in out]}

    return work, done


def _enabled_units(unit_values: tuple) -> list[tuple]:
    """The ticked units' values (enabled, type, source, scale, start, end) from the flat widget values."""
    chosen = [unit_values[i:i + 6] for i in range(0, len(unit_values), 6)]
    chosen = [u for u in chosen if u[0]]
    if not chosen:
        raise InputError("no ControlNet unit is enabled; tick at least one unit")
    return chosen


def _unit_source(ctx: Context, arr, edited, kind: str, source: str, size: int):
    """A unit's condition: the picture through ``kind``'s preprocessor (at ``size``), or the edited map as it is."""
    if source == SOURCES[0]:
        return prepare_condition(_picture(ctx, arr), kind, size=(size, size))
    return editor_picture(edited, "condition map", ctx.limits.max_image_pixels)


def _show_result(ctx: Context, results: ResultsBox, res) -> dict:
    """A job's ``done``: the result and the condition maps it used, saved to a new folder and shown."""
    folder = ctx.store.new_folder("control")
    paths = ctx.store.save_result(folder, "control", res)
    conditions = save_conditions(folder, res.extras["conditions"])
    shown = [(str(paths[0]), "result")] + [(str(path), label) for path, label in conditions]
    return results.update(shown, [*paths, *(path for path, _ in conditions)], res.params_for(0))


def build(ctx: Context) -> None:
    # Declarative layout, like every generating tab's: Tab > Row > inputs Column(scale=3) | job Column(scale=2).
    kinds = list_preprocessors()
    size = ctx.model.image_size
    with gr.Tab("ControlNet", id="control", elem_id="cd-tab-control"):
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    picture = gr.Image(label="Picture to take conditions from", type="numpy", image_mode="RGB",
                                       sources=("upload", "clipboard"), height=260, elem_id="cd-control-picture")
                    with gr.Column():
                        preview_btn = gr.Button("Preview every condition map", elem_id="cd-control-preview-all")
                        edit_kind = gr.Dropdown(kinds, value=kinds[0], label="Map to edit")
                        edit_btn = gr.Button("Load this map into the editor")
                maps = gr.Gallery(label="Condition maps", columns=len(kinds), height=160, object_fit="contain",
                                  elem_id="cd-control-maps", interactive=False)
                editor = sketch_canvas("cd-control-editor", "Condition map editor (e.g. draw a pose or edges)")
                units = [Unit(i, kinds) for i in range(UNITS)]
                pb = PromptBox(ctx, "control", value="a person waving, cartoon style")
                sb = SamplingBox(ctx, "control")
                run = gr.Button("Generate", variant="primary", elem_id="cd-control-run")
            with gr.Column(scale=2):
                panel = JobPanel(ctx.state, "control")
                results = ResultsBox("control", columns=3)

        def on_preview(arr):
            yield from guarded(panel, lambda: _preview_job(ctx, arr, kinds, size, maps))

        @page_errors
        def on_edit(arr, kind):
            return editor_value(np.asarray(to_pil(prepare_condition(_picture(ctx, arr), kind, size=(size, size))[:1])))

        def on_run(arr, edited, prompt, negative, sampler, steps, guidance, seed, *unit_values):
            def make():
                p, n = check_prompt(ctx, prompt, negative)
                kw = sb.values(ctx, sampler, steps, guidance, seed)
                chosen = _enabled_units(unit_values)
                types = [u[1] for u in chosen]
                sources = [_unit_source(ctx, arr, edited, kind, source, size) for _, kind, source, *_ in chosen]
                nets = controlnets(ctx, types)

                def work(progress):
                    model = ctx.model
                    cb = sampler_callback(progress, ctx.state, total_steps(model, kw["sampler"], kw["steps"]),
                                          model.decode)
                    return control(model, sources, p, kinds=types, scales=[float(u[3]) for u in chosen],
                                   start=[float(u[4]) for u in chosen], end=[float(u[5]) for u in chosen],
                                   preprocess=False, controlnets=nets, negative=n, show_progress=False, callback=cb,
                                   **kw)

                return work, lambda res: _show_result(ctx, results, res)

            yield from guarded(panel, make)

        preview_btn.click(on_preview, inputs=picture, outputs=[*panel.outputs, maps],
                          concurrency_limit=ctx.limits.max_queue)
        edit_btn.click(on_edit, inputs=[picture, edit_kind], outputs=editor, queue=False)
        run.click(on_run, inputs=[picture, editor, pb.prompt, pb.negative, sb.sampler, sb.steps, sb.guidance, sb.seed,
                                  *[w for u in units for w in u.inputs]],
                  outputs=[*panel.outputs, *results.outputs], concurrency_limit=ctx.limits.max_queue)
