"""Sketch → image (thesis §4.2): draw on a canvas, then SDEdit (``condiff sdedit``) or a ControlNet
(``condiff control``); the thesis's strength and guidance sweeps as a row of results."""

from __future__ import annotations

import gradio as gr

from ...experiments.config import load_config
from ...editing import sdedit_steps
from ...images import fit_image
from ...pipelines.control import control
from ...pipelines.text2img import sdedit
from ...preprocess import list_preprocessors
from ...server.runner import sampler_callback
from ..canvas import editor_picture
from ..outputs import OutputStore
from ..runner import JobPanel, guarded
from .common import (Context, PromptBox, ResultsBox, SamplingBox, check_prompt, controlnets, save_conditions,
                     total_steps)

__all__ = ["build", "sweep_values", "CANVAS"]

#: drawing canvas size in pixels (the picture is fitted to the model's size like `condiff sdedit` does)
CANVAS = 512
BRUSH_COLORS = ["#000000", "#ffffff", "#e53935", "#fb8c00", "#fdd835", "#43a047", "#1e88e5", "#8e24aa", "#795548"]


def sweep_values() -> dict[str, list[float]]:
    """The thesis's sweeps (recipes/experiments/sketch.toml): SDEdit strengths and CFG scales."""
    cfg = load_config("sketch")
    return {"strength": list(cfg.sdedit.strengths), "guidance": list(cfg.cfg.guidances),
            "guidance_strength": [cfg.cfg.strength]}


def sketch_canvas(elem_id: str, label: str):
    """A sheet with a brush (colours), eraser, undo, clear and upload; what is not drawn on reads as
    white paper (transparent pixels load over white, :func:`condiff.images.load_image`)."""
    return gr.ImageEditor(label=label, type="numpy", image_mode="RGBA", format="png", sources=("upload", "clipboard"),
                          brush=gr.Brush(colors=BRUSH_COLORS, default_color="#000000", default_size=6,
                                         color_mode="defaults"),
                          eraser=gr.Eraser(default_size=16), canvas_size=(CANVAS, CANVAS), fixed_canvas=True,
                          layers=False, transforms=(), height=560, elem_id=elem_id)


def _runs(sweeps: dict[str, list[float]], sweep: str | None, kw: dict, t0: float) -> list[dict]:
    """The SDEdit runs of a job: one per value of the ``sweep`` ("strength", "guidance"), or one at ``t0``."""
    if sweep == "strength":
        return [{**kw, "strength": t} for t in sweeps["strength"]]
    if sweep == "guidance":
        return [{**kw, "guidance": g, "strength": sweeps["guidance_strength"][0]} for g in sweeps["guidance"]]
    return [{**kw, "strength": float(t0)}]


def _show_results(ctx: Context, results: ResultsBox, picture, res_list: list, sweep: str | None,
                  use_control: bool) -> dict:
    """A job's ``done``: the sketch, each result (captioned by its swept value) and a ControlNet's condition
    maps, saved to a new folder and shown."""
    folder = ctx.store.new_folder("sketch")
    sketch_file = OutputStore.save(folder, "sketch", picture, {"canvas": "sketch"})[0]
    shown, files = [(str(sketch_file), "sketch")], [sketch_file]
    for i, res in enumerate(res_list):
        paths = ctx.store.save_result(folder, f"result-{i}" if len(res_list) > 1 else "result", res)
        files += paths
        par = res.params_for(0)
        label = (f"t0 = {par.get('strength'):g}" if sweep == "strength" else
                 f"γ = {par.get('guidance'):g}" if sweep == "guidance" else par.get("pipeline", ""))
        shown += [(str(x), label) for x in paths]
    if use_control:
        for path, label in save_conditions(folder, res_list[0].extras.get("conditions", {})):
            files.append(path)
            shown.append((str(path), label))
    return results.update(shown, files, res_list[-1].params_for(0))


def build(ctx: Context) -> None:
    # Declarative layout, like every generating tab's: Tab > Row > inputs Column(scale=3) | job Column(scale=2).
    sweeps = sweep_values()
    size = ctx.model.image_size
    with gr.Tab("Sketch → image", id="sketch", elem_id="cd-tab-sketch"):
        with gr.Row():
            with gr.Column(scale=3):
                canvas = sketch_canvas("cd-sketch-canvas", "Sketch (draw, erase, undo, clear or upload)")
                pb = PromptBox(ctx, "sketch", value="a woman, glossy shaded style")
                with gr.Row():
                    mode = gr.Radio(["SDEdit", "ControlNet"], value="SDEdit", label="Method",
                                    elem_id="cd-sketch-mode")
                    strength = gr.Slider(0, 1, value=0.6, step=0.05, label="SDEdit strength t0 (0 keeps the sketch)",
                                         elem_id="cd-sketch-strength")
                    ctype = gr.Dropdown(list_preprocessors(), value="lineart", label="ControlNet type",
                                        elem_id="cd-sketch-ctype")
                    cscale = gr.Slider(0, 2, value=1.0, step=0.05, label="ControlNet scale")
                sb = SamplingBox(ctx, "sketch")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="cd-sketch-run")
                    sweep_s = gr.Button(f"Strength sweep t0 = {', '.join(f'{v:g}' for v in sweeps['strength'])}",
                                        elem_id="cd-sketch-sweep-strength")
                    sweep_g = gr.Button(f"Guidance sweep γ = {', '.join(f'{v:g}' for v in sweeps['guidance'])}",
                                        elem_id="cd-sketch-sweep-guidance")
            with gr.Column(scale=2):
                panel = JobPanel(ctx.state, "sketch")
                results = ResultsBox("sketch", columns=3)

        inputs = [canvas, pb.prompt, pb.negative, mode, strength, ctype, cscale, sb.sampler, sb.steps, sb.guidance,
                  sb.seed]

        def on_run(sweep, value, prompt, negative, mode, t0, kind, scale, sampler, steps, guidance, seed):
            def make():
                p, n = check_prompt(ctx, prompt, negative)
                kw = sb.values(ctx, sampler, steps, guidance, seed)
                picture = editor_picture(value, "sketch", ctx.limits.max_image_pixels)
                runs = _runs(sweeps, sweep, kw, t0)
                use_control = sweep is None and mode == "ControlNet"
                nets = controlnets(ctx, [kind]) if use_control else None
                fitted = fit_image(picture, size=(size, size))

                def work(progress):
                    model = ctx.model
                    n_steps = total_steps(model, kw["sampler"], kw["steps"])
                    if use_control:
                        cb = sampler_callback(progress, ctx.state, n_steps, model.decode)
                        return [control(model, picture, p, kinds=[kind], scales=float(scale), controlnets=nets,
                                        negative=n, show_progress=False, callback=cb, **kw)]
                    total = sum(sdedit_steps(n_steps, r["strength"]) for r in runs)
                    cb = sampler_callback(progress, ctx.state, max(total, 1), model.decode)
                    return [sdedit(model, fitted, p, negative=n, show_progress=False, callback=cb, **r) for r in runs]

                return work, lambda res_list: _show_results(ctx, results, picture, res_list, sweep, use_control)

            yield from guarded(panel, make)

        outputs = [*panel.outputs, *results.outputs]
        limit = ctx.limits.max_queue
        run.click(lambda *a: (yield from on_run(None, *a)), inputs=inputs, outputs=outputs, concurrency_limit=limit)
        sweep_s.click(lambda *a: (yield from on_run("strength", *a)), inputs=inputs, outputs=outputs,
                      concurrency_limit=limit)
        sweep_g.click(lambda *a: (yield from on_run("guidance", *a)), inputs=inputs, outputs=outputs,
                      concurrency_limit=limit)
        ctx.targets["sketch"] = {"canvas": canvas}
