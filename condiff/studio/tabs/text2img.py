"""Text → image: ``condiff generate`` in the browser (pipeline :func:`condiff.pipelines.text2img.generate`)."""

from __future__ import annotations

import json

import gradio as gr

from ...commands._common import classifier_guided
from ...models.registry import component_dir
from ...pipelines.text2img import generate
from ...server.runner import sampler_callback
from ..personal import personalized
from ..runner import JobPanel, guarded
from .common import Context, PromptBox, ResultsBox, SamplingBox, check_prompt, total_steps

__all__ = ["build", "classifier_styles"]


def classifier_styles() -> list[str]:
    """Styles the built-in noisy classifier knows (``--classifier-guidance STYLE``)."""
    try:
        return list(json.loads((component_dir("classifier") / "config.json").read_text()).get("labels", []))
    except (OSError, ValueError):
        return []


def build(ctx: Context) -> None:
    with gr.Tab("Text → image", id="txt2img", elem_id="cd-tab-txt2img"):
        with gr.Row():
            with gr.Column(scale=3):
                pb = PromptBox(ctx, "txt2img", value="a cat face, flat style", concepts=True)
                sb = SamplingBox(ctx, "txt2img", batch=True)
                with gr.Accordion("Personalization and classifier guidance", open=False):
                    with gr.Row():
                        loras = gr.Dropdown(choices=ctx.library.names("lora"), multiselect=True, label="LoRA files",
                                            elem_id="cd-txt2img-loras")
                        lora_weight = gr.Slider(-2, 2, value=1.0, step=0.05, label="LoRA weight")
                        embeddings = gr.Dropdown(choices=ctx.library.names("embeddings"), multiselect=True,
                                                 label="Embeddings (textual inversion)", elem_id="cd-txt2img-embeddings")
                        finetuned = gr.Dropdown(choices=[""] + ctx.library.names("dreambooth"), value="",
                                                label="DreamBooth weights", elem_id="cd-txt2img-finetuned")
                    with gr.Row():
                        cg_style = gr.Dropdown(choices=[""] + classifier_styles(), value="",
                                               label="Classifier guidance: style (thesis eq. 3.4)")
                        cg_scale = gr.Slider(0, 20, value=1.0, step=0.5, label="Classifier-guidance scale")
                    refresh = gr.Button("Refresh lists", size="sm")
                run = gr.Button("Generate", variant="primary", elem_id="cd-txt2img-run")
            with gr.Column(scale=2):
                panel = JobPanel(ctx.state, "txt2img")
                results = ResultsBox("txt2img")
        ctx.targets["txt2img"] = {"prompt": pb.prompt, "negative": pb.negative, "sampler": sb.sampler,
                                  "steps": sb.steps, "guidance": sb.guidance, "seed": sb.seed}

        def on_run(prompt, negative, sampler, steps, guidance, seed, batch, lora_names, weight, emb_names, ft,
                   style, scale):
            def make():
                p, n = check_prompt(ctx, prompt, negative)
                kw = sb.values(ctx, sampler, steps, guidance, seed)
                b = int(batch)
                ctx.limits.check("batch", b, "max_batch", "batch")
                lora_files = [(ctx.library.path("lora", x), float(weight)) for x in lora_names or []]
                emb_files = [ctx.library.path("embeddings", x) for x in emb_names or []]
                ft_file = ctx.library.path("dreambooth", ft) if ft else None
                spec = f"{style}:{float(scale)}" if style else None

                def work(progress):
                    with personalized(ctx.model, lora_files, emb_files, ft_file) as (model, record):
                        base = None
                        if spec:
                            base, info = classifier_guided(model, spec)
                            record["classifier_guidance"] = info
                        cb = sampler_callback(progress, ctx.state, total_steps(model, kw["sampler"], kw["steps"]),
                                              model.decode)
                        res = generate(model, p, negative=n, batch_size=b, show_progress=False, base=base,
                                       callback=cb, **kw)
                    res.params.update(record)
                    return res

                def done(res):
                    folder = ctx.store.new_folder("txt2img")
                    paths = ctx.store.save_result(folder, "txt2img", res)
                    return {**results.update([str(x) for x in paths], paths, res.params_for(0)),
                            sb.last_seed: res.params_for(0)["seed"]}

                return work, done

            yield from guarded(panel, make)

        run.click(on_run, inputs=[pb.prompt, pb.negative, sb.sampler, sb.steps, sb.guidance, sb.seed, sb.batch,
                                  loras, lora_weight, embeddings, finetuned, cg_style, cg_scale],
                  outputs=[*panel.outputs, *results.outputs, sb.last_seed], concurrency_limit=ctx.limits.max_queue)
        refresh.click(lambda: (gr.update(choices=ctx.library.names("lora")),
                               gr.update(choices=ctx.library.names("embeddings")),
                               gr.update(choices=[""] + ctx.library.names("dreambooth"))),
                      outputs=[loras, embeddings, finetuned], queue=False)
