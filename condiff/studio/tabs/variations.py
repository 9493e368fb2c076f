"""Variations: unCLIP image variations (``condiff variations``, thesis 3.2.1)."""

from __future__ import annotations

import gradio as gr

from ...images import fit_image
from ...models.unclip import load_unclip
from ...pipelines.unclip import variations
from ...server.runner import sampler_callback
from ..runner import JobPanel, guarded
from .common import Context, ResultsBox, SamplingBox
from .upscale import load_picture

__all__ = ["build"]


def build(ctx: Context) -> None:
    # Laid out like Upscale (picture, caption, a slider, sampling): a declarative layout of other widgets.
    with gr.Tab("Variations", id="variations", elem_id="cd-tab-variations"):
        with gr.Row():
            with gr.Column(scale=3):
                picture = gr.Image(label="Picture to vary (centre-cropped to a square)", type="filepath",
                                   sources=("upload", "clipboard"), height=280, elem_id="cd-variations-picture")
                prompt = gr.Textbox(label="Caption (optional, also given to the decoder)", lines=1)
                n = gr.Slider(1, ctx.limits.max_batch, value=4, step=1, label="Number of variations")
                sb = SamplingBox(ctx, "variations", steps=25, guidance=3.0, guidance_range=(0.0, 15.0))
                run = gr.Button("Vary", variant="primary", elem_id="cd-variations-run")
            with gr.Column(scale=2):
                panel = JobPanel(ctx.state, "variations")
                results = ResultsBox("variations")

        def on_run(path, caption, count, sampler, steps, guidance, seed):
            def make():
                kw = sb.values(ctx, sampler, steps, guidance, seed)
                count_ = int(count)
                ctx.limits.check("variations", count_, "max_batch", "number of variations")
                image = load_picture(path, ctx)
                side = min(image.shape[-2:])
                image = fit_image(image, size=(side, side), multiple=1)
                caption_ = (caption or "").strip()
                ctx.limits.check("length", len(caption_), "max_prompt_chars", "caption")

                def work(progress):
                    model = ctx.state.aux("unclip", lambda: load_unclip(device=ctx.model.device))
                    total = kw["steps"] * (2 if model.upsampler is not None else 1)
                    cb = sampler_callback(progress, ctx.state, total)
                    return variations(model, image, n=count_, prompt=caption_, show_progress=False, callback=cb, **kw)

                return work, results.saver(ctx, "variations", "variation")

            yield from guarded(panel, make)

        run.click(on_run, inputs=[picture, prompt, n, sb.sampler, sb.steps, sb.guidance, sb.seed],
                  outputs=[*panel.outputs, *results.outputs], concurrency_limit=ctx.limits.max_queue)
