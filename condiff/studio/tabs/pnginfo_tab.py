"""PNG info: drop a PNG (condiff's or AUTOMATIC1111's) or paste its parameters, read them in
condiff's names and send them to the Text → image tab."""

from __future__ import annotations

import json

import gradio as gr

from ...samplers.registry import list_samplers
from ..pnginfo import parse_parameters_text, read_parameters
from ..runner import page_errors
from .common import Context

__all__ = ["build", "txt2img_updates"]


def txt2img_updates(params: dict, current_steps_max: int) -> list:
    """Values for the Text → image widgets (prompt, negative, sampler, steps, guidance, seed); a
    parameter the file does not have leaves its widget as it is."""
    keep = gr.update()
    sampler = params.get("sampler")
    steps = params.get("steps")
    return [
        params.get("prompt", keep) if isinstance(params.get("prompt"), str) else keep,
        params.get("negative", keep) if isinstance(params.get("negative"), str) else keep,
        sampler if sampler in list_samplers() else keep,
        min(int(steps), current_steps_max) if isinstance(steps, (int, float)) else keep,
        float(params["guidance"]) if isinstance(params.get("guidance"), (int, float)) else keep,
        int(params["seed"]) if isinstance(params.get("seed"), (int, float)) else keep,
    ]


def build(ctx: Context) -> None:
    with gr.Tab("PNG info", id="pnginfo", elem_id="cd-tab-pnginfo"):
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="PNG from condiff or AUTOMATIC1111", file_types=[".png"], type="filepath",
                                 elem_id="cd-pnginfo-file")
                text = gr.Textbox(label="…or paste parameters (condiff JSON or A1111 text)", lines=6,
                                  elem_id="cd-pnginfo-text")
                read_text = gr.Button("Read pasted parameters")
            with gr.Column():
                parsed = gr.Code(label="Parameters in condiff's names", language="json", elem_id="cd-pnginfo-parsed",
                                 interactive=False)
                send = gr.Button("Send to Text → image", variant="primary", elem_id="cd-pnginfo-send")
        state = gr.State({})

        @page_errors
        def on_file(path):
            if not path:
                return gr.update(), {}
            params = read_parameters(path, ctx.limits.max_image_pixels)
            if not params:
                raise gr.Error("this PNG carries no generation parameters", print_exception=False)
            return json.dumps(params, indent=1, sort_keys=True, default=str), params

        @page_errors
        def on_text(value):
            params = parse_parameters_text(value)
            return json.dumps(params, indent=1, sort_keys=True, default=str), params

        upload.change(on_file, inputs=upload, outputs=[parsed, state], queue=False)
        read_text.click(on_text, inputs=text, outputs=[parsed, state], queue=False)
        target = ctx.targets.get("txt2img")
        if target:
            send.click(lambda p: [*txt2img_updates(p or {}, ctx.limits.max_steps), gr.Tabs(selected="txt2img")],
                       inputs=state, queue=False,
                       outputs=[*(target[k] for k in ("prompt", "negative", "sampler", "steps", "guidance", "seed")),
                                ctx.targets["tabs"]])
