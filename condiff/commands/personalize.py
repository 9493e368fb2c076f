"""`condiff personalize dreambooth|lora|textual-inversion|identifier` (thesis §3.3, experiment 3; no maths here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer


def load_model(name_or_path: str, device: str) -> Any:
    """The model registry's loader (imported lazily; tests replace this function)."""
    try:
        from condiff.models.registry import load_model as registry_load
    except ImportError as err:
        raise ValueError(
            f"cannot load model {name_or_path!r}: condiff.models.registry.load_model is not available ({err})"
        ) from None
    return registry_load(name_or_path, device=device)


def _device(device: Optional[str]) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _work_dir(out: Path, work_dir: Optional[Path], resume: bool, overwrite: bool) -> tuple[Path, Path]:
    """(work folder, checkpoint file); refuses to clobber an earlier run or the output file."""
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    work = work_dir or out.with_name(out.stem + ".work")
    ckpt = work / "checkpoint.pt"
    if ckpt.exists() and not (resume or overwrite):
        raise FileExistsError(f"{ckpt} holds an unfinished run; pass --resume to continue it or --overwrite to restart")
    if ckpt.exists() and overwrite and not resume:
        ckpt.unlink()
    work.mkdir(parents=True, exist_ok=True)
    return work, ckpt


def _prepare(out: Path, work_dir: Optional[Path], resume: bool, overwrite: bool, model: str,
             device: Optional[str], images: Path) -> tuple[Path, Path, Any, Any]:
    """Common start of the training commands: (work folder, checkpoint file, model, subject images)."""
    from condiff.personalize import ImageSet

    work, ckpt = _work_dir(out, work_dir, resume, overwrite)
    ldm = load_model(model, _device(device))
    return work, ckpt, ldm, ImageSet.from_folder(images, ldm.image_size)


def _report(method: str, out: Path, loop: Any, extra: dict | None = None) -> None:
    last = loop.history[-1] if loop.history else {}
    info = {"method": method, "out": str(out), "bytes": out.stat().st_size, "steps": loop.steps,
            "final_loss": last.get("loss"), "train_seconds": round(loop.elapsed_s, 2), "optimizer": loop.optimizer,
            "peak_gpu_bytes": loop.peak_memory_bytes, "resumed_from": loop.resumed_from, **(extra or {})}
    typer.echo(json.dumps(info))


def register(app: typer.Typer) -> None:
    pers = typer.Typer(help="Teach a model a new subject: DreamBooth, LoRA, textual inversion (thesis 3.3).",
                       no_args_is_help=True)
    app.add_typer(pers, name="personalize")

    images_opt = typer.Option(..., "--images", help="Folder with the subject's images (3-5 are enough).")
    out_opt = typer.Option(..., "--out", help="Output file (.safetensors; .pt for A1111 legacy embeddings).")
    model_opt = typer.Option("builtin", "--model", help="Built-in model name or a local Stable Diffusion path.")
    steps_opt = typer.Option(400, "--steps", help="Training steps (thesis: 400).")
    seed_opt = typer.Option(0, "--seed", help="Seed of every random draw.")
    resume_opt = typer.Option(False, "--resume", help="Continue the run saved in the work folder.")
    overwrite_opt = typer.Option(False, "--overwrite", help="Replace the output file / restart an unfinished run.")
    work_opt = typer.Option(None, "--work-dir", help="Checkpoints and class images (default: OUT.work beside --out).")
    device_opt = typer.Option(None, "--device", help="cpu or cuda (default: cuda when present).")
    batch_opt = typer.Option(1, "--batch-size", help="Images per step (thesis: 1).")
    ckpt_opt = typer.Option(100, "--checkpoint-every", help="Steps between checkpoints.")
    progress_opt = typer.Option(True, "--progress/--no-progress", help="Show a progress bar.")

    @pers.command("dreambooth")
    def dreambooth(
        images: Path = images_opt,
        token: str = typer.Option("sks", "--token", help="The rare identifier word (see `personalize identifier`)."),
        class_noun: str = typer.Option(..., "--class-noun", help="What the subject is, e.g. 'woman'."),
        steps: int = steps_opt,
        out: Path = out_opt,
        model: str = model_opt,
        seed: int = seed_opt,
        resume: bool = resume_opt,
        lr: float = typer.Option(5e-6, "--lr", help="Learning rate (thesis: 5e-6)."),
        prior_weight: float = typer.Option(1.0, "--prior-weight", help="λ of the prior-preservation loss (0: off)."),
        num_class_images: int = typer.Option(100, "--num-class-images", help="Class images the model generates."),
        class_steps: int = typer.Option(25, "--class-steps", help="Sampler steps per class image."),
        train_text_encoder: bool = typer.Option(False, "--train-text-encoder", help="Fine-tune the text encoder too."),
        gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Save activation memory."),
        use_8bit_adam: bool = typer.Option(False, "--use-8bit-adam", help="bitsandbytes AdamW8bit when installed."),
        batch_size: int = batch_opt,
        checkpoint_every: int = ckpt_opt,
        work_dir: Optional[Path] = work_opt,
        device: Optional[str] = device_opt,
        overwrite: bool = overwrite_opt,
        progress: bool = progress_opt,
    ) -> None:
        """DreamBooth: fine-tune the U-Net on "IDENTIFIER CLASS-NOUN" prompts with prior preservation."""
        from condiff.personalize import DreamBoothConfig, save_finetuned_weights, train_dreambooth

        work, ckpt, ldm, subject = _prepare(out, work_dir, resume, overwrite, model, device, images)
        cfg = DreamBoothConfig(identifier=token, class_noun=class_noun, steps=steps, lr=lr, seed=seed,
                               prior_weight=prior_weight, prior_preservation=prior_weight > 0,
                               num_class_images=num_class_images, class_steps=class_steps,
                               train_text_encoder=train_text_encoder, gradient_checkpointing=gradient_checkpointing,
                               use_8bit_adam=use_8bit_adam, batch_size=batch_size, checkpoint_every=checkpoint_every,
                               progress=progress)
        typer.echo(f"identifier {token!r}: {identifier_line(ldm, token)}", err=True)
        result = train_dreambooth(ldm, subject, cfg, class_cache=work / "class-images", checkpoint=ckpt, resume=resume)
        save_finetuned_weights(ldm, out, include_text_encoder=train_text_encoder, overwrite=overwrite)
        _report("dreambooth", out, result.loop, {"class_images": len(result.class_images)})

    @pers.command("lora")
    def lora(
        images: Path = images_opt,
        token: str = typer.Option("sks", "--token", help="Trigger word added to every caption."),
        class_noun: str = typer.Option(..., "--class-noun", help="Default caption 'a photo of a <noun>' if none given."),
        steps: int = steps_opt,
        out: Path = out_opt,
        model: str = model_opt,
        seed: int = seed_opt,
        resume: bool = resume_opt,
        lr: float = typer.Option(1e-4, "--lr", help="Learning rate (thesis: 1e-4, cosine schedule)."),
        rank: int = typer.Option(4, "--rank", help="LoRA rank r."),
        alpha: Optional[float] = typer.Option(None, "--alpha", help="LoRA alpha (default: rank, i.e. scale 1)."),
        targets: str = typer.Option("cross-attention", "--targets", help="U-Net preset or regex of layer names."),
        text_targets: Optional[str] = typer.Option(None, "--text-targets", help="Also adapt the text encoder, e.g. text-attention."),
        layout: str = typer.Option("diffusers", "--layout", help="File key layout: diffusers (PEFT) or kohya."),
        captions: Optional[Path] = typer.Option(None, "--captions", help="JSON {file name: caption} (default: .txt beside images)."),
        batch_size: int = batch_opt,
        checkpoint_every: int = ckpt_opt,
        work_dir: Optional[Path] = work_opt,
        device: Optional[str] = device_opt,
        overwrite: bool = overwrite_opt,
        progress: bool = progress_opt,
    ) -> None:
        """LoRA: train low-rank adapters (W0 + BA) on captioned images; save in diffusers or kohya layout."""
        from condiff.personalize import LoRATrainConfig, build_captions, train_lora

        _, ckpt, ldm, subject = _prepare(out, work_dir, resume, overwrite, model, device, images)
        given = json.loads(captions.read_text()) if captions else None
        caps = build_captions(subject.paths, token, captions=given, default=f"a photo of a {class_noun}")
        tgt: dict[str, Any] = {"unet": targets}
        if text_targets:
            tgt["text_encoder"] = text_targets
        cfg = LoRATrainConfig(rank=rank, alpha=alpha, targets=tgt, steps=steps, lr=lr, seed=seed,
                              batch_size=batch_size, checkpoint_every=checkpoint_every, progress=progress)
        result = train_lora(ldm, subject, caps, cfg, checkpoint=ckpt, resume=resume, out=out, layout=layout,
                            overwrite=overwrite, name=out.stem)
        _report("lora", out, result.loop, {"layout": layout, "modules": len(result.network),
                                           "parameters": result.network.num_parameters()})

    @pers.command("textual-inversion")
    def textual_inversion(
        images: Path = images_opt,
        token: str = typer.Option("<sks>", "--token", help="The new placeholder word."),
        class_noun: str = typer.Option(..., "--class-noun", help="Initializer word for the new vector(s)."),
        steps: int = steps_opt,
        out: Path = out_opt,
        model: str = model_opt,
        seed: int = seed_opt,
        resume: bool = resume_opt,
        lr: float = typer.Option(5e-4, "--lr", help="Learning rate (thesis: 5e-4)."),
        num_vectors: int = typer.Option(1, "--num-vectors", help="Vectors per token (multi-vector embeddings)."),
        initializer: Optional[str] = typer.Option(None, "--initializer", help="Initializer word (default: --class-noun)."),
        learnable: str = typer.Option("object", "--learnable", help="object or style (prompt templates)."),
        fmt: str = typer.Option("a1111", "--format", help="a1111 (safetensors), a1111-pt or diffusers."),
        batch_size: int = batch_opt,
        checkpoint_every: int = ckpt_opt,
        work_dir: Optional[Path] = work_opt,
        device: Optional[str] = device_opt,
        overwrite: bool = overwrite_opt,
        progress: bool = progress_opt,
    ) -> None:
        """Textual inversion: learn new token embedding(s) v*, everything else frozen."""
        from condiff.personalize import TextualInversionConfig, train_textual_inversion

        _, ckpt, ldm, subject = _prepare(out, work_dir, resume, overwrite, model, device, images)
        cfg = TextualInversionConfig(token=token, initializer=initializer or class_noun, num_vectors=num_vectors,
                                     learnable=learnable, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                                     checkpoint_every=checkpoint_every, progress=progress)
        result = train_textual_inversion(ldm, subject, cfg, checkpoint=ckpt, resume=resume, out=out, out_format=fmt,
                                         overwrite=overwrite)
        _report("textual-inversion", out, result.loop, {"format": fmt, "vectors": result.embedding.num_vectors})

    @pers.command("identifier")
    def identifier(
        word: Optional[str] = typer.Argument(None, help="A candidate identifier to look up."),
        model: str = model_opt,
        count: int = typer.Option(5, "--count", help="How many rare candidates to propose."),
        seed: int = seed_opt,
    ) -> None:
        """Show how rare an identifier is for the model's tokenizer, and propose rare ones."""
        from condiff.personalize import rare_identifiers

        ldm = load_model(model, "cpu")
        if word:
            typer.echo(identifier_line(ldm, word))
        for report in rare_identifiers(ldm.text_encoder.tokenizer, count, seed=seed):
            typer.echo(f"candidate {report.describe()}")


def identifier_line(ldm: Any, word: str) -> str:
    from condiff.personalize import identifier_rarity

    return identifier_rarity(ldm.text_encoder.tokenizer, word).describe()
