"""Inpaint (thesis §4.3): upload a picture, paint the mask on it, ``condiff inpaint`` with the
method and blending of choice; composite, mask outline and raw output; send the result back."""

from __future__ import annotations

import gradio as gr
import numpy as np

from ...compositing import BLEND_METHODS
from ...pipelines.inpaint import DEFAULT_BLEND
from ...data.experiment_inputs import EXPERIMENTS_DIR
from ...errors import InputError
from ...images import load_image, to_pil
from ...pipelines.inpaint import INPAINT_METHODS, inpaint
from ...server.runner import sampler_callback
from ..canvas import editor_background, editor_mask, editor_value, mask_outline
from ..outputs import OutputStore
from ..runner import JobPanel, guarded, page_errors
from .common import Context, PromptBox, ResultsBox, SamplingBox, check_prompt, total_steps

__all__ = ["build", "default_picture"]


def default_picture() -> np.ndarray:
    """The thesis's inpainting example (experiment 2's input) to start from."""
    path = EXPERIMENTS_DIR / "exp2_remove-sunglasses_image.png"
    if not path.is_file():
        raise InputError(f"the example picture {path.name} is not installed; upload a picture instead")
    return np.asarray(to_pil(load_image(path)))


def mask_canvas(elem_id: str):
    """An upload canvas with a brush whose strokes (any colour) are the mask."""
    return gr.ImageEditor(label="Picture: upload, then paint the region to replace", type="numpy", image_mode="RGBA",
                          format="png", sources=("upload", "clipboard"),
                          brush=gr.Brush(colors=["#ffffff", "#ff00ff", "#00e5ff"], default_color="#ff00ff",
                                         default_size=12, color_mode="defaults"),
                          eraser=gr.Eraser(default_size=16), transforms=(), layers=False, height=560,
                          canvas_size=(512, 512), elem_id=elem_id)


def build(ctx: Context) -> None:
    with gr.Tab("Inpaint", id="inpaint", elem_id="cd-tab-inpaint"):
        with gr.Row():
            with gr.Column(scale=3):
                canvas = mask_canvas("cd-inpaint-canvas")
                pb = PromptBox(ctx, "inpaint", value="a smiling face, glossy style")
                with gr.Row():
                    method = gr.Radio(list(INPAINT_METHODS), value="model" if ctx.model.inpaint_unet is not None
                                      else "blend", label="Method", elem_id="cd-inpaint-method")
                    blend = gr.Radio(list(BLEND_METHODS), value=DEFAULT_BLEND, label="Blending (laplacian/poisson: seam-aware)",
                                     elem_id="cd-inpaint-blend")
                with gr.Row():
                    color_match = gr.Checkbox(False, label="Match colours to the surroundings")
                    feather = gr.Slider(0, 16, value=0, step=0.5, label="Feather radius (px)")
                    only_masked = gr.Checkbox(False, label="Only the masked area (full resolution window)")
                    no_composite = gr.Checkbox(False, label="Raw model output (no composite)")
                sb = SamplingBox(ctx, "inpaint")
                run = gr.Button("Inpaint", variant="primary", elem_id="cd-inpaint-run")
            with gr.Column(scale=2):
                panel = JobPanel(ctx.state, "inpaint")
                results = ResultsBox("inpaint", columns=3)
                send = gr.Button("Send result back to inpaint", elem_id="cd-inpaint-send")
                example = gr.Button("Load the thesis's example picture", elem_id="cd-inpaint-example")
        last = gr.State(None)
        ctx.targets["inpaint"] = {"canvas": canvas}

        def on_run(value, prompt, negative, method, blend, color_match, feather, only_masked, no_composite,
                   sampler, steps, guidance, seed):
            def make():
                p, n = check_prompt(ctx, prompt, negative)
                kw = sb.values(ctx, sampler, steps, guidance, seed)
                image = editor_background(value, "picture", ctx.limits.max_image_pixels)
                mask = editor_mask(value, ctx.limits.max_image_pixels)
                opts = dict(method=method, blend=blend, color_match=bool(color_match), feather=float(feather),
                            crop_to_mask=bool(only_masked), composite=not no_composite)

                def work(progress):
                    model = ctx.model
                    n_steps = total_steps(model, kw["sampler"], kw["steps"])
                    cb = sampler_callback(progress, ctx.state, n_steps, model.decode)  # (RePaint reports none)
                    return inpaint(model, image, mask, p, negative=n, show_progress=False, callback=cb, **kw, **opts)

                def done(res):
                    folder = ctx.store.new_folder("inpaint")
                    inputs = [OutputStore.save(folder, "image", image, {"canvas": "image"})[0],
                              OutputStore.save(folder, "mask", mask, {"canvas": "mask"})[0]]
                    paths = ctx.store.save_result(folder, "inpaint", res)
                    outline = OutputStore.save(folder, "mask-outline", mask_outline(res.images[:1], mask), {})[0]
                    shown = [(str(paths[0]), "result"), (str(outline), "mask outline")]
                    if opts["composite"]:
                        raw = OutputStore.save(folder, "raw", res.extras["raw"][:1], res.params_for(0))[0]
                        shown.append((str(raw), "raw model output"))
                    return {**results.update(shown, [*paths, *inputs], res.params_for(0)), last: str(paths[0])}

                return work, done

            yield from guarded(panel, make)

        run.click(on_run, inputs=[canvas, pb.prompt, pb.negative, method, blend, color_match, feather, only_masked,
                                  no_composite, sb.sampler, sb.steps, sb.guidance, sb.seed],
                  outputs=[*panel.outputs, *results.outputs, last], concurrency_limit=ctx.limits.max_queue)

        @page_errors
        def send_back(path):
            if not path:
                raise InputError("no result yet; run inpainting first, then send it back")
            return editor_value(np.asarray(to_pil(load_image(path))))

        send.click(send_back, inputs=last, outputs=canvas, queue=False)
        example.click(page_errors(lambda: editor_value(default_picture())), outputs=canvas, queue=False)
