"""DreamBooth: fine-tune the diffusion model on a subject with prior preservation (thesis §3.3.1).

The U-Net (optionally the text encoder too) is trained on the few subject images x with the prompt
"[identifier] [class noun]" c, and at the same time on images x_pr that the *model itself*
generated for the plain class prompt c_pr ("a photo of a woman"), so it keeps its class prior:

    L_subject = w_t ‖x̂_θ(α_t x + σ_t ε, c) − x‖²                                    (3.14)
    L_class   = w_t' ‖x̂_θ(α_t' x_pr + σ_t' ε', c_pr) − x_pr‖²                       (3.15)
    L = E[L_subject + λ · L_class]                                                     (3.16)

Both terms use the model's own objective (:func:`condiff.personalize.train_common.diffusion_loss`:
ε-loss for ε-models, which is eq. 3.14 with w_t = α_t²/σ_t² in x̂-form; v-loss for v-models), and
they draw their noise from independent seeded streams, so λ = 0 and λ > 0 differ by exactly λ·L_class.

Class images are generated once with a seeded sampler (image i uses seed + i) and cached as PNG
files in a folder keyed by the model, prompt and sampler settings; a second run reuses them.

The identifier should be a word with a weak prior (Ruiz et al. 2023 pick rare tokens of the
tokenizer; the thesis uses "sks"). :func:`identifier_rarity` shows how the tokenizer splits a word
and where its pieces rank in the vocabulary (BPE/WordPiece ids grow with rarity, so the rank is a
rarity proxy; with a caption corpus the actual count is shown too); :func:`rare_identifiers`
proposes short single-token words from the rare end of the vocabulary.

Memory options for Stable-Diffusion-sized models: gradient checkpointing, 8-bit AdamW (when
bitsandbytes is importable) and bf16 autocast on CUDA (the thesis used 8-bit Adam on a 16 GB T4).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

from ..io import atomic_path, check_writable
from .embeddings import own_text_encoder, text_transformer
from .train_common import (DREAMBOOTH_LR, ImageSet, LoopConfig, LoopResult, TrainSettings, diffusion_loss,
                           encode_latents, load_image, prompt_cond, run_training, training_device)

__all__ = [
    "IdentifierReport",
    "identifier_rarity",
    "rare_identifiers",
    "DreamBoothConfig",
    "DreamBoothResult",
    "generate_class_images",
    "prior_preservation_loss",
    "train_dreambooth",
    "save_finetuned_weights",
    "load_finetuned_weights",
    "base_spec",
]


# ------------------------------------------------------------------------------- identifiers
@dataclass
class IdentifierReport:
    """How a tokenizer sees a candidate identifier."""

    word: str
    pieces: list[str]
    ids: list[int]
    vocab_size: int
    corpus_count: int | None = None

    @property
    def single_token(self) -> bool:
        return len(self.ids) == 1

    @property
    def rank_fraction(self) -> float:
        """Position of the most common piece in the vocabulary, 0 (frequent) … 1 (rare)."""
        return min(self.ids) / self.vocab_size if self.ids else 0.0

    def describe(self) -> str:
        parts = ", ".join(f"{p!r}=#{i}" for p, i in zip(self.pieces, self.ids))
        corpus = "" if self.corpus_count is None else f"; {self.corpus_count} uses in the corpus"
        kind = "one token" if self.single_token else f"{len(self.ids)} pieces"
        return (f"{self.word!r}: {kind} [{parts}] of a {self.vocab_size}-token vocabulary, rarity rank "
                f"{self.rank_fraction:.2f} (0 = most frequent, 1 = rarest){corpus}")


def _count_in(corpus: Iterable[str] | None, word: str) -> int | None:
    if corpus is None:
        return None
    pat = re.compile(rf"(?<!\w){re.escape(word.lower())}(?!\w)")
    return sum(len(pat.findall(text.lower())) for text in corpus)


def identifier_rarity(tokenizer: Any, word: str, corpus: Iterable[str] | None = None) -> IdentifierReport:
    """Tokenize ``word`` and report its pieces, ids, vocabulary rank and (optionally) corpus count."""
    if not word or any(c.isspace() for c in word):
        raise ValueError(f"an identifier must be one word without spaces, got {word!r}")
    ids = [int(i) for i in tokenizer(word, add_special_tokens=False)["input_ids"]]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    return IdentifierReport(word, list(pieces), ids, len(tokenizer), _count_in(corpus, word))


def rare_identifiers(tokenizer: Any, count: int = 5, *, rank_range: tuple[float, float] = (0.6, 0.98),
                     lengths: tuple[int, int] = (3, 4), corpus: Sequence[str] | None = None, seed: int = 0,
                     max_tries: int = 20000) -> list[IdentifierReport]:
    """Short alphabetic words that are a single token from the rare part of the vocabulary.

    Candidates are visited in a seeded random order among ids with rank in ``rank_range``; a
    candidate must decode to ``lengths[0]..lengths[1]`` ASCII letters, re-tokenize to exactly its
    own id, and (with ``corpus``) never occur in the corpus (Ruiz et al. 2023's rare-token lookup).
    """
    lo, hi = rank_range
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"rank_range must satisfy 0 ≤ lo < hi ≤ 1, got {rank_range}")
    n = len(tokenizer)
    first, last = int(lo * n), max(int(lo * n) + 1, int(hi * n))
    order = torch.randperm(last - first, generator=torch.Generator().manual_seed(seed))[:max_tries] + first
    words = corpus if corpus is None else list(corpus)
    found: list[IdentifierReport] = []
    seen = set()
    for i in order.tolist():
        word = tokenizer.decode([i]).strip().lower()
        if word in seen or not (lengths[0] <= len(word) <= lengths[1]) or not (word.isascii() and word.isalpha()):
            continue
        seen.add(word)
        report = identifier_rarity(tokenizer, word, words)
        if report.ids != [i] or (report.corpus_count or 0) > 0:
            continue
        found.append(report)
        if len(found) == count:
            break
    if not found:
        raise ValueError("no rare single-token word found; widen rank_range or lengths")
    return found


# ------------------------------------------------------------------------------- configuration
@dataclass
class DreamBoothConfig(TrainSettings):
    """DreamBooth settings (thesis §4.4.2: "sks" + "woman", lr 5e-6, 400 steps, batch 1; the loop's are
    :class:`TrainSettings`)."""

    identifier: str = "sks"
    class_noun: str = "woman"
    instance_template: str = "a photo of {identifier} {class_noun}"
    class_template: str = "a photo of {class_noun}"
    prior_preservation: bool = True
    prior_weight: float = 1.0  # λ of eq. 3.16
    num_class_images: int = 100
    class_sampler: str = "dpmpp_2m"
    class_steps: int = 25
    class_guidance: float = 5.0
    class_batch_size: int = 4
    train_text_encoder: bool = False
    lr: float = DREAMBOOTH_LR
    lr_schedule: str = "constant"
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    mixed_precision: str = "auto"

    @property
    def instance_prompt(self) -> str:
        return self.instance_template.format(identifier=self.identifier, class_noun=self.class_noun)

    @property
    def class_prompt(self) -> str:
        return self.class_template.format(class_noun=self.class_noun)

    def loop(self) -> LoopConfig:
        if self.prior_weight < 0:
            raise ValueError(f"prior_weight λ must be ≥ 0, got {self.prior_weight}")
        return self.loop_config("dreambooth", optimizer="adamw8bit" if self.use_8bit_adam else "adamw",
                                mixed_precision=self.mixed_precision)


@dataclass
class DreamBoothResult:
    loop: LoopResult
    identifier: IdentifierReport
    class_images: list[Path]


# ------------------------------------------------------------------------------- class images
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "prompt"


def generate_class_images(model: Any, prompt: str, count: int, cache_dir: str | os.PathLike, *, seed: int = 0,
                          sampler: str = "dpmpp_2m", steps: int = 25, guidance: float = 5.0,
                          batch_size: int = 4, progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """``count`` images of ``prompt`` generated by ``model`` (image i with seed + i), cached on disk.

    The cache folder is keyed by model name, prompt, size and sampler settings; images that are
    already there are reused, missing ones are generated and written atomically as PNG.
    """
    from PIL import Image

    from ..guidance import ClassifierFreeGuidance
    from ..samplers import sample

    if count < 1 or batch_size < 1:
        raise ValueError("count and batch_size must be ≥ 1")
    settings = {"model": getattr(model, "name", "model"), "prompt": prompt, "size": int(model.image_size),
                "sampler": sampler, "steps": int(steps), "guidance": float(guidance), "seed": int(seed)}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(cache_dir) / f"{_slug(prompt)}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    if not manifest.exists():
        with atomic_path(manifest) as tmp:
            tmp.write_text(json.dumps(settings, indent=1))
    paths = [folder / f"{seed + i:08d}.png" for i in range(count)]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    if not todo:
        return paths
    model.eval()
    with torch.no_grad():
        uncond = model.encode_prompts([""])
        denoiser = model.denoiser()
        if guidance != 1.0:
            denoiser = ClassifierFreeGuidance(denoiser, guidance, uncond)
        shape = model.latent_shape(model.image_size, model.image_size)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            cond = model.encode_prompts([prompt] * len(chunk))
            z = sample(denoiser, (len(chunk), *shape), sampler=sampler, steps=steps, seed=[seed + i for i in chunk],
                       cond=cond, device=model.device, dtype=model.dtype)
            imgs = ((model.decode(z).float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            for i, img in zip(chunk, imgs):
                with atomic_path(paths[i]) as tmp:
                    Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
            if progress is not None:
                progress(min(start + batch_size, len(todo)), len(todo))
    return paths


# ------------------------------------------------------------------------------- the loss
def prior_preservation_loss(loss_fn: Callable, denoiser: Any, subject_x0: Tensor, subject_cond: Any,
                            class_x0: Tensor | None, class_cond: Any, prior_weight: float,
                            subject_noise: torch.Generator, class_noise: torch.Generator
                            ) -> tuple[Tensor, dict[str, float]]:
    """L_subject + λ·L_class (eq. 3.14–3.16) with independent noise streams for the two terms.

    ``loss_fn(denoiser, x0, cond, generator) -> [B]`` is the model's diffusion objective. The class
    term is computed on ``class_x0`` (the model's own class images) with the class prompt; with
    λ = 0 or no class images it is skipped.
    """
    subject = loss_fn(denoiser, subject_x0, subject_cond, subject_noise).mean()
    parts = {"loss_subject": float(subject.detach())}
    if class_x0 is None or prior_weight == 0:
        return subject, parts
    prior = loss_fn(denoiser, class_x0, class_cond, class_noise).mean()
    parts["loss_class"] = float(prior.detach())
    return subject + prior_weight * prior, parts


# ------------------------------------------------------------------------------- training
def _stream(g: torch.Generator, k: int) -> torch.Generator:
    """A child generator derived from the step generator (stream k)."""
    seed = int(torch.randint(0, 2**62, (), generator=g)) + k * 0x9E3779B1
    return torch.Generator().manual_seed(seed % (2**63 - 1))


def train_dreambooth(model: Any, images: ImageSet, config: DreamBoothConfig | None = None, *,
                     class_cache: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
                     resume: bool = False, corpus: Sequence[str] | None = None) -> DreamBoothResult:
    """Fine-tune ``model.unet`` (and the text encoder if asked) in place with prior preservation."""
    config = config or DreamBoothConfig()
    loop = config.loop()
    tokenizer = model.text_encoder.tokenizer
    report = identifier_rarity(tokenizer, config.identifier, corpus)
    if not report.single_token or report.rank_fraction < 0.3:
        warnings.warn(f"the identifier may carry a strong prior or split into pieces: {report.describe()}; "
                      "see rare_identifiers() for candidates", stacklevel=2)
    device = training_device(model)
    class_paths: list[Path] = []
    class_set = None
    if config.prior_preservation and config.prior_weight > 0:
        if class_cache is None:
            raise ValueError("prior preservation needs class_cache (a folder for the generated class images)")
        class_paths = generate_class_images(
            model, config.class_prompt, config.num_class_images, class_cache, seed=config.seed,
            sampler=config.class_sampler, steps=config.class_steps, guidance=config.class_guidance,
            batch_size=config.class_batch_size,
        )
        class_set = ImageSet(torch.stack([load_image(p, images.size) for p in class_paths]), class_paths,
                             flip=images.flip, crop_min=images.crop_min)

    unet = model.unet
    model.vae.requires_grad_(False)
    if isinstance(model.text_encoder, torch.nn.Module):
        model.text_encoder.requires_grad_(False)
    trainable = {f"unet.{k}": p for k, p in unet.named_parameters()}
    text_model = None
    if config.train_text_encoder:
        text_model = text_transformer(own_text_encoder(model))
        trainable.update({f"text_encoder.{k}": p for k, p in text_model.named_parameters()})
    if config.gradient_checkpointing:
        if not hasattr(unet, "set_gradient_checkpointing"):
            raise ValueError(f"{type(unet).__name__} does not support gradient checkpointing")
        unet.set_gradient_checkpointing(True)
    loss_fn = diffusion_loss(model)
    denoiser = model.denoiser()
    b = loop.batch_size

    def conds() -> tuple[Any, Any]:
        grad = config.train_text_encoder
        subject = prompt_cond(model, [config.instance_prompt] * b, grad=grad)
        klass = prompt_cond(model, [config.class_prompt] * b, grad=grad) if class_set is not None else None
        return subject, klass

    def step_loss(step: int, g: torch.Generator):
        g_subject, g_class = _stream(g, 1), _stream(g, 2)
        _, x = images.sample(b, g_subject)
        z = encode_latents(model, x.to(device))
        zc = None
        if class_set is not None:
            _, xc = class_set.sample(b, g_class)
            zc = encode_latents(model, xc.to(device))
        c_subject, c_class = conds()
        return prior_preservation_loss(loss_fn, denoiser, z, c_subject, zc, c_class, config.prior_weight,
                                       g_subject, g_class)

    unet.train()
    if text_model is not None:
        text_model.train()
    try:
        result = run_training(trainable, step_loss, loop, checkpoint=checkpoint, resume=resume, device=device)
    finally:
        unet.eval()
        if text_model is not None:
            text_model.eval()
        if config.gradient_checkpointing:
            unet.set_gradient_checkpointing(False)
    return DreamBoothResult(result, report, class_paths)


# ------------------------------------------------------------------------------- weights


def base_spec(model: Any) -> str:
    """What :func:`condiff.models.registry.load_model` needs to load ``model``'s base again: the
    built-in name, or the path of the Stable Diffusion file/folder it was loaded from."""
    path = (getattr(model, "info", None) or {}).get("path")
    return str(Path(path).resolve()) if path else str(getattr(model, "name", ""))


def save_finetuned_weights(model: Any, path: str | os.PathLike, *, include_text_encoder: bool = False,
                           dtype: torch.dtype | None = None, overwrite: bool = False,
                           base_unet: Any = None) -> Path:
    """The fine-tuned U-Net (``unet.*`` keys, diffusers names) [+ ``text_encoder.*``] as safetensors.

    The metadata names the base (``condiff.base``, see :func:`base_spec`), so the file loads as a
    model wherever one is accepted (:func:`condiff.models.sd_loader.load_finetuned_model`). ``base_unet``: the U-Net the
    fine-tune started from; the U-Net is then stored as its 4-bit weight difference
    (:mod:`condiff.personalize.weight_delta`, about a quarter of an fp16 copy).
    """
    from safetensors.torch import save_file

    from ..models.sd_loader import FINETUNE_KIND
    from ..models.weight_delta import DELTA_KIND, encode_delta

    path = check_writable(path, overwrite)
    if path.suffix != ".safetensors":
        raise ValueError(f"fine-tuned weights are written as .safetensors, got {path.name}")
    unet = model.unet.state_dict()
    if base_unet is not None:
        unet = encode_delta(unet, base_unet.state_dict())
    state = {f"unet.{k}": v for k, v in unet.items()}
    if include_text_encoder:
        state.update({f"text_encoder.{k}": v for k, v in text_transformer(model.text_encoder).state_dict().items()})
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous().clone()
             for k, v in state.items()}
    meta = {"format": "pt", "condiff.kind": FINETUNE_KIND, "condiff.model": str(getattr(model, "name", "")),
            "condiff.base": base_spec(model)}
    if base_unet is not None:
        meta["condiff.delta"] = DELTA_KIND
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def load_finetuned_weights(model: Any, path: str | os.PathLike) -> None:
    """Load weights written by :func:`save_finetuned_weights` into ``model`` (strict per component; a
    weight difference is added to the model's own U-Net)."""
    from ..models.sd_loader import apply_finetuned_weights

    apply_finetuned_weights(model, path, text_module=text_transformer)
