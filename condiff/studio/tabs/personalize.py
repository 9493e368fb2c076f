"""Personalize (thesis §4.4): 3–10 pictures of a subject → DreamBooth, LoRA or textual inversion
(``condiff personalize …``), with a live loss curve; the result joins the library (and so the
LoRA / embedding / DreamBooth pickers of Text → image) and preview images are drawn with it.

Training is the CLI command in a child process (:func:`condiff.server.subjobs.run_cli`, as the
server's ``/condiff/v1/personalize`` route): it must not change the model the server keeps
serving, and Cancel stops it at once. The loss curve is read from the run's checkpoint file
(written every few steps, with the loss history) while it trains.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import gradio as gr
import torch

from ...errors import InputError
from ...images import load_image
from ...pipelines.text2img import generate
from ...server.subjobs import run_cli
from ..personal import personalized
from ..runner import JobPanel, guarded
from .common import Context

__all__ = ["build", "METHODS", "training_args", "loss_history", "MIN_IMAGES", "MAX_IMAGES"]

#: method label → (CLI sub-command, library kind, default token)
METHODS = {"LoRA": ("lora", "lora", "sks"), "Textual inversion": ("textual-inversion", "embeddings", "<sks>"),
           "DreamBooth": ("dreambooth", "dreambooth", "sks")}
MIN_IMAGES, MAX_IMAGES = 3, 10
_WORD = re.compile(r"^[^\s/\\]{1,40}$")
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def training_args(method: str, images: Path, out: Path, work: Path, *, token: str, class_noun: str, steps: int,
                  seed: int, lr: float | None, batch_size: int, checkpoint_every: int, model: str, device: str,
                  extra: dict) -> list[str]:
    """The ``condiff personalize METHOD …`` command line of the tab's settings."""
    command = METHODS[method][0]
    for field, word in (("token", token), ("class noun", class_noun)):
        if not _WORD.match(word or "") or word.startswith("-"):
            raise InputError(f"{field}: {word!r} must be one word without spaces or slashes")
    args = ["personalize", command, "--images", str(images), "--out", str(out), "--work-dir", str(work),
            "--token", token, "--class-noun", class_noun, "--steps", str(steps), "--seed", str(seed),
            "--batch-size", str(batch_size), "--checkpoint-every", str(checkpoint_every), "--model", model,
            "--device", device]
    if lr:
        args += ["--lr", f"{lr:g}"]
    if command == "lora":
        args += ["--rank", str(int(extra["rank"])), "--targets", extra["targets"], "--layout", extra["layout"]]
        if extra.get("alpha"):
            args += ["--alpha", f"{float(extra['alpha']):g}"]
        if extra.get("text_targets"):
            args += ["--text-targets", extra["text_targets"]]
    elif command == "textual-inversion":
        args += ["--num-vectors", str(int(extra["num_vectors"])), "--learnable", extra["learnable"],
                 "--format", "a1111"]
        if extra.get("initializer"):
            args += ["--initializer", extra["initializer"]]
    else:
        args += ["--prior-weight", f"{float(extra['prior_weight']):g}", "--num-class-images",
                 str(int(extra["num_class_images"])), "--class-steps", str(int(extra["class_steps"]))]
        args += [flag for key, flag in (("train_text_encoder", "--train-text-encoder"),
                                        ("gradient_checkpointing", "--gradient-checkpointing"),
                                        ("use_8bit_adam", "--use-8bit-adam")) if extra.get(key)]
    return args


def loss_history(checkpoint: Path) -> list[dict]:
    """The ``history`` records ({step, loss, …}) of a personalization checkpoint ([] if none yet)."""
    if not checkpoint.is_file():
        return []
    try:
        return list(torch.load(checkpoint, map_location="cpu", weights_only=True).get("history", []))
    except Exception:  # noqa: BLE001 -- being replaced right now: read it at the next poll
        return []


def _copy_images(files: list, folder: Path, max_pixels: int) -> Path:
    if not files or not MIN_IMAGES <= len(files) <= MAX_IMAGES:
        raise InputError(f"images: give {MIN_IMAGES}–{MAX_IMAGES} pictures of the subject (got {len(files or [])})")
    images = folder / "images"
    images.mkdir()
    for i, f in enumerate(files):
        path = Path(getattr(f, "name", f))
        load_image(path, max_pixels=max_pixels)  # readable and within the limit, before training starts
        shutil.copyfile(path, images / f"{i:03d}{path.suffix.lower() or '.png'}")
    return images


#: each method's own options (keys of :func:`training_args`' ``extra``), in the order of their widgets
_OPTIONS = ("rank", "alpha", "targets", "text_targets", "layout", "num_vectors", "initializer", "learnable",
            "prior_weight", "num_class_images", "class_steps", "train_text_encoder", "gradient_checkpointing",
            "use_8bit_adam")


def _method_options() -> list:
    """The accordions of each method's own options; their widgets in :data:`_OPTIONS`' order."""
    with gr.Accordion("LoRA options", open=False):
        with gr.Row():
            lora = [gr.Slider(1, 64, value=4, step=1, label="Rank r"),
                    gr.Number(None, label="Alpha (empty: rank)"),
                    gr.Textbox("cross-attention", label="U-Net targets (preset or regex)"),
                    gr.Textbox("", label="Text-encoder targets (e.g. text-attention)"),
                    gr.Radio(["diffusers", "kohya"], value="diffusers", label="File layout")]
    with gr.Accordion("Textual-inversion options", open=False):
        with gr.Row():
            inversion = [gr.Slider(1, 8, value=1, step=1, label="Vectors per token"),
                         gr.Textbox("", label="Initializer word (default: class noun)"),
                         gr.Radio(["object", "style"], value="object", label="Learnable")]
    with gr.Accordion("DreamBooth options", open=False):
        with gr.Row():
            dreambooth = [gr.Number(1.0, minimum=0, label="Prior-preservation weight λ (0: off)"),
                          gr.Number(100, precision=0, minimum=1, label="Class images"),
                          gr.Number(25, precision=0, minimum=1, label="Sampler steps per class image")]
        with gr.Row():
            dreambooth += [gr.Checkbox(False, label="Train the text encoder too"),
                           gr.Checkbox(False, label="Gradient checkpointing"),
                           gr.Checkbox(False, label="8-bit Adam (bitsandbytes)")]
    return [*lora, *inversion, *dreambooth]


def _library_file(ctx: Context, kind: str, command: str, name: str, token: str) -> Path:
    """Where the trained file joins the library: the given name, else method-token-time; never an existing file."""
    label = _NAME.sub("-", (name or "").strip()) or f"{command}-{token.strip('<>')}-{time.strftime('%H%M%S')}"
    out = ctx.library.folder(kind) / f"{label}.safetensors"
    if out.exists():
        raise InputError(f"name: the library already has {out.name}; choose another name")
    return out


def _training_job(ctx: Context, shown: tuple, files: list, method: str, token: str, noun: str, name: str, steps,
                  seed, lr, batch, extra: dict) -> tuple:
    """(work, done, watch) of a training run: the images and settings checked, the CLI command run in a child
    process, previews drawn with the result; ``shown`` = (loss curve, previews, result file) widgets."""
    curve, previews, result_file = shown
    limits = ctx.limits
    command, kind, _ = METHODS[method]
    n_steps = int(steps)
    limits.check("training steps", n_steps, "max_train_steps", "steps")
    limits.check("images", len(files or []), "max_train_images", "images")
    folder = ctx.store.new_folder("personalize")
    images = _copy_images(files, folder, limits.max_image_pixels)
    out = _library_file(ctx, kind, command, name, token)
    every = max(1, n_steps // (5 if command == "dreambooth" else 25))
    args = training_args(method, images, folder / out.name, folder / "work", token=token.strip(),
                         class_noun=noun.strip(), steps=n_steps, seed=int(seed or 0), lr=lr or None,
                         batch_size=int(batch), checkpoint_every=every, model=ctx.state.model_name,
                         device=str(ctx.state.device), extra=extra)
    checkpoint = folder / "work" / "checkpoint.pt"
    prompt = f"a photo of {token.strip()} {noun.strip()}"

    def work(progress):
        run_cli(args, progress, folder)
        shutil.copyfile(folder / out.name, out)
        lora = [(out, 1.0)] if kind == "lora" else []
        emb = [out] if kind == "embeddings" else []
        with personalized(ctx.model, lora, emb, out if kind == "dreambooth" else None) as (model, _):
            shots = generate(model, prompt, seed=int(seed or 0), batch_size=2, show_progress=False)
        return out, shots, loss_history(checkpoint)

    def done(result):
        path, shots, history = result
        pics = ctx.store.save_result(ctx.store.new_folder("personalize-preview"), "preview", shots)
        return {curve: _frame(history), previews: [(str(p), prompt) for p in pics], result_file: str(path)}

    seen = [None]

    def watch(job):  # the checkpoint is re-read only when it was rewritten
        stamp = checkpoint.stat().st_mtime if checkpoint.is_file() else None
        if stamp == seen[0]:
            return {}
        seen[0] = stamp
        history = loss_history(checkpoint)
        return {curve: _frame(history)} if history else {}

    return work, done, watch


def build(ctx: Context) -> None:
    limits = ctx.limits
    with gr.Tab("Personalize", id="personalize", elem_id="cd-tab-personalize"):
        with gr.Row():
            with gr.Column(scale=2):
                files = gr.File(label=f"{MIN_IMAGES}–{MAX_IMAGES} pictures of the subject", file_count="multiple",
                                file_types=["image"], elem_id="cd-personalize-files")
                method = gr.Radio(list(METHODS), value="LoRA", label="Method (thesis §3.3)")
                with gr.Row():
                    token = gr.Textbox("sks", label="Token (the new word)")
                    class_noun = gr.Textbox("horse", label="Class noun (what the subject is)")
                    name = gr.Textbox("", label="Name in the library (default: method-token-time)")
                with gr.Row():
                    steps = gr.Slider(1, limits.max_train_steps, value=min(400, limits.max_train_steps), step=1,
                                      label="Training steps (thesis: 400)")
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed")
                    lr = gr.Number(None, label="Learning rate (empty: the method's thesis default)")
                    batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size")
                options = _method_options()
                run = gr.Button("Train", variant="primary", elem_id="cd-personalize-run")
            with gr.Column(scale=2):
                panel = JobPanel(ctx.state, "personalize", preview=False)
                curve = gr.LinePlot(x="step", y="loss", title="Training loss", height=240,
                                    elem_id="cd-personalize-loss")
                previews = gr.Gallery(label="Previews with the trained result", columns=2, height=240,
                                      interactive=False, elem_id="cd-personalize-previews")
                result_file = gr.File(label="Trained file (in the library)", interactive=False)

        def on_run(files_, method_, token_, noun_, name_, steps_, seed_, lr_, batch_, *options_):
            values = (files_, method_, token_, noun_, name_, steps_, seed_, lr_, batch_, dict(zip(_OPTIONS, options_)))
            yield from guarded(panel, lambda: _training_job(ctx, (curve, previews, result_file), *values))

        run.click(on_run, inputs=[files, method, token, class_noun, name, steps, seed, lr, batch_size, *options],
                  outputs=[*panel.outputs, curve, previews, result_file], concurrency_limit=ctx.limits.max_queue)
        method.change(lambda m: METHODS[m][2], inputs=method, outputs=token, queue=False)


def _frame(history: list[dict]):
    import pandas as pd

    return pd.DataFrame({"step": [h["step"] for h in history], "loss": [h["loss"] for h in history]})
