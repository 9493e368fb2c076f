"""`condiff personalize dreambooth|lora|textual-inversion|identifier` (thesis §3.3, experiment 3; no maths here).

The three training commands share one set of options and one run protocol (:class:`Job`): the
output and the images are checked before the model loads; checkpoints (and DreamBooth's class
images) go to a work folder, ``OUT.work`` beside ``--out``; the work folder is removed after a
success, and after a failure when this run created it, unless ``--keep-work`` (its location and
size are then printed).
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from .. import validate as V
from . import _common as C


def load_model(name_or_path: str, device: str) -> Any:
    """The model registry's loader (imported lazily; tests replace this function)."""
    from condiff.models.registry import load_model as registry_load

    return registry_load(name_or_path, device=device)


# (name, type, option) of the options every training command takes
_SHARED = [
    ("images", Path, typer.Option(..., "--images", help="Folder with the subject's images (3-5 are enough).")),
    ("out", Path, typer.Option(..., "--out", "-o", help="Output file (.safetensors; .pt for A1111 legacy embeddings).")),
    ("model", str, typer.Option("builtin", "--model", "-m", help="Built-in model name or a local Stable Diffusion path.")),
    ("steps", int, typer.Option(400, "--steps", min=1, help="Training steps, 1-100000 (thesis: 400; --limit train_steps=N).")),
    ("seed", int, typer.Option(0, "--seed", min=0, help="Seed ≥ 0 of every random draw.")),
    ("batch_size", int, typer.Option(1, "--batch-size", min=1, max=64, help="Images per step, 1-64 (thesis: 1).")),
    ("checkpoint_every", int, typer.Option(100, "--checkpoint-every", min=0, help="Steps between checkpoints (0: only at the end).")),
    ("resume", bool, typer.Option(False, "--resume", help="Continue the run saved in the work folder.")),
    ("work_dir", Optional[Path], typer.Option(None, "--work-dir", help="Checkpoints and class images (default: OUT.work beside --out).")),
    ("keep_work", bool, typer.Option(False, "--keep-work", help="Keep the work folder after the run (default: removed; a failed resumable run keeps it only when asked).")),
    ("device", Optional[str], C.DEVICE_OPT),
    ("overwrite", bool, typer.Option(False, "--overwrite", help="Replace the output file / restart an unfinished run.")),
    ("progress", bool, C.PROGRESS_OPT),
    ("as_json", bool, C.JSON_OPT),
    ("threads", Optional[int], C.THREADS_OPT),
]


@dataclass
class Job:
    """The shared options of one training command and its work folder."""

    images: Path
    out: Path
    model: str
    steps: int
    seed: int
    batch_size: int
    checkpoint_every: int
    resume: bool
    work_dir: Optional[Path]
    keep_work: bool
    device: Optional[str]
    overwrite: bool
    progress: bool
    as_json: bool
    threads: Optional[int]

    @property
    def work(self) -> Path:
        return self.work_dir or self.out.with_name(self.out.stem + ".work")

    @property
    def checkpoint(self) -> Path:
        return self.work / "checkpoint.pt"

    def settings(self, lr: float) -> dict[str, Any]:
        """The loop settings of the method's config (:class:`condiff.personalize.train_common.TrainSettings`)."""
        return dict(steps=self.steps, lr=lr, seed=self.seed, batch_size=self.batch_size,
                    checkpoint_every=self.checkpoint_every, progress=self.progress)

    def check(self, suffixes: tuple[str, ...]) -> None:
        """Everything that can be checked before the model loads."""
        V.check_steps(self.steps, "--steps", allow_none=False, training=True)
        V.check_output(self.out, self.overwrite, suffixes=suffixes)
        if self.checkpoint.exists() and not (self.resume or self.overwrite):
            raise V.OutputExistsError(17, f"{self.checkpoint} holds an unfinished run; pass --resume to continue it "
                                      "or --overwrite to restart")
        from ..personalize.train_common import list_images

        list_images(self.images)

    def start(self) -> tuple[Any, Any]:
        """(model, subject images): the work folder is made, the model loaded, the images read."""
        from ..io import clean_orphans
        from ..personalize import ImageSet

        self._created = not self.work.exists()
        if self.checkpoint.exists() and self.overwrite and not self.resume:
            self.checkpoint.unlink()
        self.work.mkdir(parents=True, exist_ok=True)
        clean_orphans(self.work)
        ldm = load_model(self.model, str(V.check_device(self.device)))
        return ldm, ImageSet.from_folder(self.images, ldm.image_size)

    def finish(self, ok: bool) -> None:
        """Remove the work folder (after success; after failure when this run made it) unless --keep-work."""
        if not self.work.exists():
            return
        if self.keep_work or (not ok and not getattr(self, "_created", False)):
            size = sum(p.stat().st_size for p in self.work.rglob("*") if p.is_file())
            typer.echo(f"kept work folder {self.work} ({size / 2**20:.1f} MiB)", err=True)
            return
        shutil.rmtree(self.work, ignore_errors=True)

    def report(self, method: str, loop: Any, extra: dict | None = None) -> None:
        last = loop.history[-1] if loop.history else {}
        info = {"method": method, "out": str(self.out), "bytes": self.out.stat().st_size, "steps": loop.steps,
                "final_loss": last.get("loss"), "train_seconds": round(loop.elapsed_s, 2),
                "optimizer": loop.optimizer, "peak_gpu_bytes": loop.peak_memory_bytes,
                "resumed_from": loop.resumed_from, **(extra or {})}
        if self.as_json:
            typer.echo(json.dumps(info))
        else:
            loss = f", final loss {info['final_loss']:.4g}" if info["final_loss"] is not None else ""
            typer.echo(f"wrote {self.out} ({info['bytes']} bytes, {method}, {loop.steps} steps{loss})")


def training_command(group: typer.Typer, name: str, suffixes: tuple[str, ...]) -> Callable:
    """Register ``fn(job, **own_options)`` as ``personalize NAME`` with the :data:`_SHARED` options added."""

    def deco(fn: Callable) -> Callable:
        @C.with_options(job=_SHARED)
        @functools.wraps(fn)
        def command(job: dict, **kwargs):
            run = Job(**job)
            run.check(suffixes)
            ok = False
            try:
                fn(run, **kwargs)
                ok = True
            finally:
                run.finish(ok)

        group.command(name)(command)
        return fn

    return deco


# The three methods' --token, --class-noun and --lr look alike to a duplicate finder but differ in default and help
# (each method's thesis value); the options they share are _SHARED, passed in as ``job``.
def dreambooth(
    job: Job,
    token: str = typer.Option("sks", "--token", help="The rare identifier word (see `personalize identifier`)."),
    class_noun: str = typer.Option(..., "--class-noun", help="What the subject is, e.g. 'woman'."),
    lr: float = typer.Option(5e-6, "--lr", min=0.0, help="Learning rate > 0 (thesis: 5e-6)."),
    prior_weight: float = typer.Option(1.0, "--prior-weight", min=0.0, help="λ ≥ 0 of the prior-preservation loss (0: off)."),
    num_class_images: int = typer.Option(100, "--num-class-images", min=1, max=10000, help="Class images the model generates, 1-10000."),
    class_steps: int = typer.Option(25, "--class-steps", min=1, max=1000, help="Sampler steps per class image, 1-1000."),
    train_text_encoder: bool = typer.Option(False, "--train-text-encoder", help="Fine-tune the text encoder too."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Save activation memory."),
    use_8bit_adam: bool = typer.Option(False, "--use-8bit-adam", help="bitsandbytes AdamW8bit when installed."),
) -> None:
    """DreamBooth: fine-tune the U-Net on "IDENTIFIER CLASS-NOUN" prompts with prior preservation."""
    from condiff.personalize import DreamBoothConfig, save_finetuned_weights, train_dreambooth

    V.check_prompt(token, "--token")
    V.check_prompt(class_noun, "--class-noun")
    ldm, subject = job.start()
    cfg = DreamBoothConfig(identifier=token, class_noun=class_noun, prior_weight=prior_weight,
                           prior_preservation=prior_weight > 0, num_class_images=num_class_images,
                           class_steps=class_steps, train_text_encoder=train_text_encoder,
                           gradient_checkpointing=gradient_checkpointing, use_8bit_adam=use_8bit_adam,
                           **job.settings(lr))
    typer.echo(f"identifier {token!r}: {identifier_line(ldm, token)}", err=True)
    result = train_dreambooth(ldm, subject, cfg, class_cache=job.work / "class-images", checkpoint=job.checkpoint,
                              resume=job.resume)
    save_finetuned_weights(ldm, job.out, include_text_encoder=train_text_encoder, overwrite=job.overwrite)
    job.report("dreambooth", result.loop, {"class_images": len(result.class_images)})


def lora(
    job: Job,
    token: str = typer.Option("sks", "--token", help="Trigger word added to every caption."),
    class_noun: str = typer.Option(..., "--class-noun", help="Default caption 'a photo of a <noun>' if none given."),
    lr: float = typer.Option(1e-4, "--lr", min=0.0, help="Learning rate > 0 (thesis: 1e-4, cosine schedule)."),
    rank: int = typer.Option(4, "--rank", min=1, max=1024, help="LoRA rank r, 1-1024."),
    alpha: Optional[float] = typer.Option(None, "--alpha", min=0.0, help="LoRA alpha > 0 (default: rank, i.e. scale 1)."),
    targets: str = typer.Option("cross-attention", "--targets", help="U-Net preset or regex of layer names."),
    text_targets: Optional[str] = typer.Option(None, "--text-targets", help="Also adapt the text encoder, e.g. text-attention."),
    layout: str = typer.Option("diffusers", "--layout", help="File key layout: diffusers (PEFT) or kohya."),
    captions: Optional[Path] = typer.Option(None, "--captions", help="JSON {file name: caption} (default: .txt beside images)."),
) -> None:
    """LoRA: train low-rank adapters (W0 + BA) on captioned images; save in diffusers or kohya layout."""
    from condiff.personalize import LoRATrainConfig, build_captions, train_lora

    V.check_choice("--layout", layout, ("diffusers", "kohya"))
    given = _read_captions(captions)
    ldm, subject = job.start()
    caps = build_captions(subject.paths, token, captions=given, default=f"a photo of a {class_noun}")
    tgt: dict[str, Any] = {"unet": targets}
    if text_targets:
        tgt["text_encoder"] = text_targets
    cfg = LoRATrainConfig(rank=rank, alpha=alpha, targets=tgt, **job.settings(lr))
    result = train_lora(ldm, subject, caps, cfg, checkpoint=job.checkpoint, resume=job.resume, out=job.out,
                        layout=layout, overwrite=job.overwrite, name=job.out.stem)
    job.report("lora", result.loop, {"layout": layout, "modules": len(result.network),
                                     "parameters": result.network.num_parameters()})


def _read_captions(captions: Optional[Path]) -> dict | None:
    if captions is None:
        return None
    V.check_input_file(captions, "--captions")
    try:
        given = json.loads(captions.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise V.InputError(f"--captions {captions} is not a JSON object of file name → caption ({err})") from None
    if not isinstance(given, dict) or not all(isinstance(v, str) for v in given.values()):
        raise V.InputError(f"--captions {captions} must hold a JSON object {{file name: caption}}")
    return given


def textual_inversion(
    job: Job,
    token: str = typer.Option("<sks>", "--token", help="The new placeholder word."),
    class_noun: str = typer.Option(..., "--class-noun", help="Initializer word for the new vector(s)."),
    lr: float = typer.Option(5e-4, "--lr", min=0.0, help="Learning rate > 0 (thesis: 5e-4)."),
    num_vectors: int = typer.Option(1, "--num-vectors", min=1, max=75, help="Vectors per token, 1-75 (multi-vector embeddings)."),
    initializer: Optional[str] = typer.Option(None, "--initializer", help="Initializer word (default: --class-noun)."),
    learnable: str = typer.Option("object", "--learnable", help="object or style (prompt templates)."),
    fmt: str = typer.Option("a1111", "--format", help="a1111 (safetensors), a1111-pt or diffusers."),
) -> None:
    """Textual inversion: learn new token embedding(s) v*, everything else frozen."""
    from condiff.personalize import TextualInversionConfig, train_textual_inversion

    V.check_choice("--learnable", learnable, ("object", "style"))
    V.check_choice("--format", fmt, ("a1111", "a1111-pt", "diffusers"))
    ldm, subject = job.start()
    cfg = TextualInversionConfig(token=token, initializer=initializer or class_noun, num_vectors=num_vectors,
                                 learnable=learnable, **job.settings(lr))
    result = train_textual_inversion(ldm, subject, cfg, checkpoint=job.checkpoint, resume=job.resume, out=job.out,
                                     out_format=fmt, overwrite=job.overwrite)
    job.report("textual-inversion", result.loop, {"format": fmt, "vectors": result.embedding.num_vectors})


def identifier(
    word: Optional[str] = typer.Argument(None, help="A candidate identifier to look up."),
    model: str = typer.Option("builtin", "--model", "-m", help="Built-in model name or a local Stable Diffusion path."),
    count: int = typer.Option(5, "--count", min=0, max=1000, help="How many rare candidates to propose, 0-1000."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed ≥ 0 of the proposals."),
) -> None:
    """Show how rare an identifier is for the model's tokenizer, and propose rare ones."""
    from condiff.personalize import rare_identifiers

    ldm = load_model(model, "cpu")
    if word:
        typer.echo(identifier_line(ldm, V.check_prompt(word, "identifier")))
    for report in rare_identifiers(ldm.text_encoder.tokenizer, count, seed=seed):
        typer.echo(f"candidate {report.describe()}")


def identifier_line(ldm: Any, word: str) -> str:
    from condiff.personalize import identifier_rarity

    return identifier_rarity(ldm.text_encoder.tokenizer, word).describe()


def register(app: typer.Typer) -> None:
    pers = typer.Typer(help="Teach a model a new subject: DreamBooth, LoRA, textual inversion (thesis 3.3).",
                       no_args_is_help=True)
    app.add_typer(pers, name="personalize")
    weights = (".safetensors",)
    training_command(pers, "dreambooth", weights)(dreambooth)
    training_command(pers, "lora", weights)(lora)
    training_command(pers, "textual-inversion", weights + (".pt", ".bin"))(textual_inversion)
    pers.command("identifier")(identifier)
