"""Widgets every generating tab shares: prompt with the built-in vocabulary, sampler settings with
seed dice and reuse, and the results area (gallery, downloads, parameters). No maths here.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from ...errors import InputError
from ...pipelines.common import schedule_for
from ...samplers.registry import list_samplers, sampler_info
from .. import vocab
from ..outputs import OutputStore
from ..personal import Library

__all__ = ["Context", "PromptBox", "SamplingBox", "ResultsBox", "total_steps", "check_prompt", "save_conditions",
           "SEED_MAX"]

SEED_MAX = 2**31 - 1


@dataclass
class Context:
    """What every tab needs: the server state, where outputs go, the personalization library, and
    components other tabs fill (e.g. the inpainting canvas that "send to inpaint" targets)."""

    state: Any
    store: OutputStore
    library: Library
    targets: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self):
        return self.state.model

    @property
    def limits(self):
        return self.state.limits

    def default(self, key: str, fallback: Any) -> Any:
        return (getattr(self.model, "info", None) or {}).get(key, fallback)


def total_steps(model: Any, sampler: str, steps: int | None) -> int:
    """How many sampler steps a pipeline will run (the schedule it builds, :func:`schedule_for`)."""
    sigmas = schedule_for(model.denoiser(), sampler, steps, None, (getattr(model, "info", None) or {}).get("default_steps"))
    return len(sigmas) - 1


def check_prompt(ctx: Context, prompt: str, negative: str = "", *, required: bool = True) -> tuple[str, str]:
    """Strip and check the prompts against the server's ``--max-prompt-chars``."""
    prompt, negative = (prompt or "").strip(), (negative or "").strip()
    if required and not prompt:
        raise InputError("prompt: write what to draw (pick a concept and a style below for ideas)")
    ctx.limits.check("length", len(prompt), "max_prompt_chars", "prompt")
    ctx.limits.check("length", len(negative), "max_prompt_chars", "negative prompt")
    return prompt, negative


class PromptBox:
    """Prompt and negative prompt, with the built-in concepts and styles to compose one."""

    def __init__(self, ctx: Context, kind: str, value: str = "", required: bool = True, concepts: bool = False):
        self.prompt = gr.Textbox(label="Prompt", value=value, lines=2, elem_id=f"cd-{kind}-prompt",
                                 placeholder="e.g. a cat face, flat style" if required else "optional caption")
        self.negative = gr.Textbox(label="Negative prompt", lines=1, elem_id=f"cd-{kind}-negative")
        with gr.Accordion("What the built-in model can draw", open=concepts):
            with gr.Row():
                names = list(vocab.concepts()) if concepts else []  # the long list once (Text → image)
                concept = gr.Dropdown(choices=names, label=f"Concept ({len(names)} known)" if names else "Concept",
                                      filterable=True, allow_custom_value=True, value=None,
                                      elem_id=f"cd-{kind}-concept")
                style = gr.Dropdown(choices=list(vocab.styles()), label="Style", value=None, allow_custom_value=True,
                                    elem_id=f"cd-{kind}-style")
                use = gr.Button("Use in prompt", size="sm", scale=0, min_width=120)
            gr.Examples(examples=[[p] for p in vocab.example_prompts()], inputs=[self.prompt], label="Examples")
        use.click(vocab.compose_prompt, inputs=[concept, style, self.prompt], outputs=self.prompt, queue=False)


class SamplingBox:
    """Sampler, steps, guidance, seed (dice: random; reuse: the last result's seed)."""

    def __init__(self, ctx: Context, kind: str, *, steps: int | None = None, guidance: float | None = None,
                 sampler: str = "dpmpp_2m", batch: bool = False, guidance_range: tuple[float, float] = (0.0, 30.0)):
        limits = ctx.limits
        with gr.Row():
            self.sampler = gr.Dropdown(choices=list_samplers(), value=sampler, label="Sampler",
                                       info=sampler_info(sampler).description, elem_id=f"cd-{kind}-sampler")
            self.steps = gr.Slider(1, limits.max_steps, value=steps or ctx.default("default_steps", 20), step=1,
                                   label="Steps", elem_id=f"cd-{kind}-steps")
            self.guidance = gr.Slider(*guidance_range, value=guidance if guidance is not None else
                                      ctx.default("default_guidance", 5.0), step=0.5, label="Guidance γ (CFG)",
                                      elem_id=f"cd-{kind}-guidance")
        with gr.Row():
            self.seed = gr.Number(value=0, precision=0, minimum=0, maximum=SEED_MAX, label="Seed",
                                  elem_id=f"cd-{kind}-seed")
            dice = gr.Button("random", size="sm", scale=0, min_width=70, elem_id=f"cd-{kind}-dice")
            reuse = gr.Button("♻ reuse", size="sm", scale=0, min_width=80, elem_id=f"cd-{kind}-reuse")
            self.batch = gr.Slider(1, limits.max_batch, value=1, step=1, label="Batch", visible=batch,
                                   elem_id=f"cd-{kind}-batch")
        self.last_seed = gr.State(None)
        dice.click(lambda: random.randint(0, SEED_MAX), outputs=self.seed, queue=False)
        reuse.click(lambda s, cur: cur if s is None else s, inputs=[self.last_seed, self.seed], outputs=self.seed,
                    queue=False)
        self.sampler.change(lambda s: gr.update(info=sampler_info(s).description), inputs=self.sampler,
                            outputs=self.sampler, queue=False)

    def values(self, ctx: Context, sampler: str, steps: float, guidance: float, seed: float) -> dict[str, Any]:
        """Checked pipeline keywords from the widgets' values (limits of the server)."""
        if sampler not in list_samplers():
            raise InputError(f"sampler: unknown sampler {sampler!r}; pick one from the list")
        steps = int(steps)
        ctx.limits.check("steps", steps, "max_steps", "steps")
        seed = int(seed or 0)
        if not 0 <= seed <= SEED_MAX:
            raise InputError(f"seed: {seed} is outside 0 … {SEED_MAX}")
        return {"sampler": sampler, "steps": steps, "guidance": float(guidance), "seed": seed}


class ResultsBox:
    """Result gallery, downloadable files (PNG with parameters inside) and the parameters box."""

    def __init__(self, kind: str, label: str = "Results", columns: int = 4):
        self.gallery = gr.Gallery(label=label, columns=columns, height=300, object_fit="contain", format="png",
                                  elem_id=f"cd-{kind}-gallery", interactive=False)
        with gr.Accordion("Downloads and parameters", open=False, elem_id=f"cd-{kind}-downloads"):
            self.files = gr.File(label="PNG files (parameters inside)", file_count="multiple", interactive=False,
                                 elem_id=f"cd-{kind}-files")
            self.params = gr.Code(label="Parameters (paste into PNG info to reuse)", language="json",
                                  elem_id=f"cd-{kind}-params", interactive=False)

    def update(self, shown: list, files: list[Path], params: dict[str, Any]) -> dict:
        """The updates that show a job's outputs."""
        return {self.gallery: shown, self.files: [str(p) for p in files],
                self.params: json.dumps(params, indent=1, sort_keys=True, default=str)}

    def saver(self, ctx: Context, kind: str, name: str):
        """A job's ``done``: write the result's images (with parameters) to a new folder and show them."""
        def done(res) -> dict:
            paths = ctx.store.save_result(ctx.store.new_folder(kind), name, res)
            return self.update([str(p) for p in paths], paths, res.params_for(0))

        return done

    @property
    def outputs(self) -> list:
        return [self.gallery, self.files, self.params]


def save_conditions(folder: Path, conditions: dict[str, Any]) -> list[tuple[Path, str]]:
    """Write a ControlNet result's condition maps (``res.extras["conditions"]``) beside it: (file, caption) each."""
    saved = []
    for kind, cond in conditions.items():
        path = OutputStore.save(folder, f"condition-{kind}", cond[:1], {"condition": kind})[0]
        saved.append((path, f"{kind} condition"))
    return saved


def controlnets(ctx: Context, kinds: list[str]) -> dict[str, Any] | None:
    """The built-in ControlNets of ``kinds``, loaded once per server (``state.aux``); None for other
    models, whose ControlNets the pipeline resolves itself (and asks for by name when missing)."""
    from ...pipelines.control import controlnet_component, load_builtin_controlnet

    if ctx.state.model_name != "builtin":
        return None
    model = ctx.model
    return {k: ctx.state.aux(controlnet_component(k), lambda k=k: load_builtin_controlnet(k, model.device, model.dtype))
            for k in kinds}
