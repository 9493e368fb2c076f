"""Upscale: the cascade's SR3 stage ×2 on any picture (``condiff upscale``, thesis 3.2.2)."""

from __future__ import annotations

import gradio as gr

from ...errors import InputError
from ...images import fit_image, load_image
from ...models.cascade import load_cascade
from ...pipelines.cascade import upscale
from ...samplers.registry import sampler_info
from ...server.runner import sampler_callback
from ..runner import JobPanel, guarded
from .common import Context, ResultsBox, SamplingBox

__all__ = ["build", "load_picture"]


def load_picture(path: str | None, ctx: Context, what: str = "picture"):
    """An uploaded file as an image tensor, decoded under the server's ``--max-image-pixels``."""
    if not path:
        raise InputError(f"no {what}: upload one first")
    return load_image(path, max_pixels=ctx.limits.max_image_pixels)


def build(ctx: Context) -> None:
    # Laid out like Variations (picture, caption, a slider, sampling): a declarative layout of other widgets.
    with gr.Tab("Upscale", id="upscale", elem_id="cd-tab-upscale"):
        with gr.Row():
            with gr.Column(scale=3):
                picture = gr.Image(label="Picture (cropped by at most 3 px to a multiple of 4)", type="filepath",
                                   sources=("upload", "clipboard"), height=280, elem_id="cd-upscale-picture")
                prompt = gr.Textbox(label="Caption (optional; the SR stage is text-conditioned)", lines=1)
                noise_level = gr.Slider(0, 1, value=0.1, step=0.01,
                                        label="Noise-conditioning augmentation level s (0 trusts the input)")
                sb = SamplingBox(ctx, "upscale", steps=20, guidance=1.0, guidance_range=(0.0, 10.0))
                run = gr.Button("Upscale ×2", variant="primary", elem_id="cd-upscale-run")
            with gr.Column(scale=2):
                panel = JobPanel(ctx.state, "upscale")
                results = ResultsBox("upscale", columns=1)

        def on_run(path, caption, level, sampler, steps, guidance, seed):
            def make():
                kw = sb.values(ctx, sampler, steps, guidance, seed)
                image = fit_image(load_picture(path, ctx), multiple=4)
                ctx.limits.check("output pixels", image.shape[-1] * image.shape[-2] * 4, "max_pixels", "picture")
                caption_ = (caption or "").strip() or None
                if caption_:
                    ctx.limits.check("length", len(caption_), "max_prompt_chars", "caption")

                def work(progress):
                    sr = ctx.state.aux("cascade-sr", lambda: load_cascade(device=ctx.model.device, stages=("sr",)))
                    total = kw["steps"] or sr.info.get("default_steps") or sampler_info(kw["sampler"]).default_steps
                    cb = sampler_callback(progress, ctx.state, int(total))
                    return upscale(sr, image, caption_, noise_level=float(level), show_progress=False, callback=cb,
                                   **kw)

                return work, results.saver(ctx, "upscale", "upscaled")

            yield from guarded(panel, make)

        run.click(on_run, inputs=[picture, prompt, noise_level, sb.sampler, sb.steps, sb.guidance, sb.seed],
                  outputs=[*panel.outputs, *results.outputs], concurrency_limit=ctx.limits.max_queue)
