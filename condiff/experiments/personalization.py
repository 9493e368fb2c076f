"""Experiment 3 (thesis §4.4): DreamBooth, LoRA and textual inversion × three prompts, measured.

The subject is one picture the base models never saw: the Noto unicorn (the concept is removed
from every training source, :mod:`condiff.data.heldout`), like the thesis's one woman. The methods
train on five views of it (:data:`TRAIN_VIEWS`: turned, scaled, mirrored, shifted) with the
identifier ``nrhp`` (one rare WordPiece, absent from the world's captions; the thesis's "sks" is two
common pieces for MiniLM) and the class noun "horse"; three other views (:data:`HELD_OUT_VIEWS`)
are used only to measure subject fidelity. The three prompts are the thesis's three kinds, in the
vocabulary of the built-in world: recontextualisation ("… on a carousel"), another style ("… in
openmoji style": outlines, where the subject is Noto's glossy style) and an added accessory ("…
wearing a crown"). Each method is trained with :mod:`condiff.personalize` at the thesis's 400 steps,
batch 1 (DreamBooth: 200 steps at twice the learning rate, see the recipe), its learning rates
raised for the 16 M-parameter U-Net — or taken from an earlier run, because training is the slow
part on a CPU:

1. shipped results: ``<weights>/personalization/<method>/`` (``train.json`` + the artefact; the
   DreamBooth U-Net as its 4-bit weight difference, :mod:`condiff.models.weight_delta`), when
   trained with the config's settings;
2. the cache of earlier ``--train`` runs: ``<cache>/personalization/<model>-<method>-<settings hash>/``;
3. otherwise, with ``train=True`` (``--train``), it trains now and fills the cache; without, a
   shipped result trained with other settings stands in (source "shipped (other settings)"), else
   the method is skipped and the report says how to get it.

The table's ``source`` column says which: a cached/shipped artefact is loaded, but every picture and
metric is computed in the run. Every variant (the base model and each method) renders the three
prompts and the class prompt ("a horse") with the same seeds. Metrics, following DreamBooth's
evaluation (Ruiz et al. 2023, §4.1) with condiff-evalenc in place of CLIP/DINO:

* **subject fidelity**: mean 100·cos between each generated picture and the held-out views
  (CLIP-I style), and the LPIPS-like distance to the nearest held-out view; each also as the paired
  difference to the base model (same prompt and seed) with a bootstrap interval;
* **prompt fidelity**: evalenc prompt score against the prompt *without* the identifier (CLIP-T);
* **class drift** (language drift, DreamBooth §3.3): how far the class prompt's pictures moved from
  the base model's for the same seeds, 100·(1 − cos) in evalenc space (and LPIPS-like);
* cost: sampling time of each cell in this run, training time, peak memory and the artefact's file
  size (full U-Net vs. LoRA vs. one embedding: the thesis's "gigabytes / megabytes / kilobytes").
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..io import atomic_path
from ..metrics.perceptual import filter_bank_distance
from .config import EXPERIMENT_TITLES, PersonalizationConfig, to_dict
from .context import (ExperimentContext, ExperimentResult, Figure, Table, as_unit_batch, fmt_summary, summarize,
                      to_model_size)
from .report import COLUMN_LABELS, plot_bars
from .sweep import image_grid

__all__ = ["Personalized", "run_personalization", "subject_inputs", "subject_texts", "personalization_texts",
           "find_result", "train_method", "apply_method", "METHOD_TITLES", "ARTEFACT_FILES"]

METHOD_TITLES = {"dreambooth": "DreamBooth", "lora": "LoRA", "textual_inversion": "Textual inversion"}
ARTEFACT_FILES = {"dreambooth": "unet.safetensors", "lora": "lora.safetensors",
                  "textual_inversion": "embedding.safetensors"}
#: DreamBooth's instance prompt and the class prompt (DreamBooth's prior preservation and the drift check).
INSTANCE_TEMPLATE = "a {identifier} {class_noun}"
CLASS_TEMPLATE = "a {class_noun}"
#: The subject is one picture (the Noto unicorn, like the thesis's one woman) seen in several poses:
#: (angle °, scale, mirrored, shift x, shift y) of a view, as fractions of the picture.
TRAIN_VIEWS = ((0.0, 1.0, False, 0.0, 0.0), (-14.0, 0.8, True, 0.0, 0.0), (8.0, 0.9, False, 0.05, 0.0),
               (0.0, 0.85, True, 0.0, 0.05), (-6.0, 1.0, False, 0.0, 0.0))
#: Poses of the same subject used only for measuring subject fidelity (never trained on).
HELD_OUT_VIEWS = ((15.0, 0.75, False, 0.0, 0.0), (-10.0, 0.9, True, -0.05, 0.0), (4.0, 0.7, True, 0.0, -0.05))
SUBJECT_SOURCE = "noto/unicorn"
PROMPT_KINDS = ("recontextualisation", "another style", "an added accessory")


@dataclass
class Personalized:
    """A personalization artefact with its training record and where it came from."""

    method: str
    folder: Path
    record: dict[str, Any]
    source: str  # "shipped" | "shipped (other settings)" | "cache" | "trained now"

    @property
    def file(self) -> Path:
        return self.folder / ARTEFACT_FILES[self.method]


def subject_view(image: Tensor, angle: float, scale: float, mirrored: bool, dx: float, dy: float) -> Tensor:
    """One pose of a [3, S, S] picture in [0, 1] on white: mirrored, turned by ``angle`` degrees, scaled and
    shifted (by fractions of the picture), the uncovered corners white."""
    x = image.flip(-1) if mirrored else image
    a = math.radians(angle)
    theta = torch.tensor([[math.cos(a) / scale, -math.sin(a) / scale, dx],
                          [math.sin(a) / scale, math.cos(a) / scale, dy]], dtype=x.dtype)[None]
    grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
    return (F.grid_sample(x[None] - 1, grid, padding_mode="zeros", align_corners=False)[0] + 1).clamp(0, 1)


def subject_texts(config: PersonalizationConfig | None = None) -> dict[str, Any]:
    """Identifier, class noun, prompts and LoRA captions of the subject (no pictures loaded)."""
    from ..data.experiment_inputs import EXPERIMENTS_DIR
    from ..data.shards import read_json

    config = config or PersonalizationConfig()
    doc = read_json(EXPERIMENTS_DIR / "experiments.json")["exp3"]
    ident, noun = config.identifier, doc["class_noun"]
    prompts = [p.format(identifier=ident, class_noun=noun) for p in config.prompts]
    return {"identifier": ident, "class_noun": noun, "prompts": prompts,
            "captions": [f"a {ident} {noun}, glossy style"] * len(TRAIN_VIEWS),
            "thesis_prompts": doc.get("thesis_prompts", [])}


def subject_inputs(size: int, config: PersonalizationConfig | None = None) -> dict[str, Any]:
    """The subject's training views [5, 3, S, S] and held-out views [3, 3, S, S] in [0, 1] (all of the
    Noto unicorn, which no model was trained on), with :func:`subject_texts`."""
    from ..data.experiment_inputs import load_experiment_inputs

    doc = load_experiment_inputs()["exp3"]
    picture = next(s for s in doc["subject"] if s["source"] == SUBJECT_SOURCE and s["angle"] == 0 and not s["mirrored"])
    base = to_model_size(as_unit_batch(picture["image"]), size)[0]
    return {"images": torch.stack([subject_view(base, *v) for v in TRAIN_VIEWS]),
            "held_out": torch.stack([subject_view(base, *v) for v in HELD_OUT_VIEWS]), **subject_texts(config)}


def personalization_texts(config: PersonalizationConfig) -> list[str]:
    """Every text that experiment 3 with ``config`` gives the text encoder: the prompts as each variant
    renders them, the prompts without the identifier (prompt fidelity), the class prompt, DreamBooth's
    instance prompt, the LoRA captions, textual inversion's templates around its token and its
    initializer word, and the empty prompt (CFG). A compact MiniLM (the GPU machine's) must hold
    their word pieces (``training.bundle`` of a source checkout)."""
    from ..personalize import TextualInversionConfig

    t = subject_texts(config)
    ident, noun, token = t["identifier"], t["class_noun"], config.textual_inversion.token
    texts = ["", ident, noun, INSTANCE_TEMPLATE.format(identifier=ident, class_noun=noun),
             CLASS_TEMPLATE.format(class_noun=noun), *t["captions"], *t["thesis_prompts"]]
    for p in t["prompts"]:
        texts += [p, _without_identifier(p, ident)] + [_method_prompt(m, p, ident, noun, token) for m in METHOD_TITLES]
    ti = TextualInversionConfig(token=token, initializer=config.textual_inversion.initializer or noun)
    texts += [ti.initializer] + [tpl.format(token) for tpl in ti.prompt_templates()]
    return list(dict.fromkeys(texts))


def _size(n: int) -> str:
    for unit, k in (("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def _without_identifier(prompt: str, identifier: str) -> str:
    return " ".join(w for w in prompt.split() if w != identifier)


def _method_prompt(method: str, prompt: str, identifier: str, noun: str, token: str) -> str:
    """Textual inversion's placeholder stands for "<identifier> <noun>" (Gal et al.: "a photo of S*")."""
    if method == "textual_inversion":
        return prompt.replace(f"{identifier} {noun}", token)
    return prompt


# --------------------------------------------------------------------------- artefacts


_FINGERPRINTS: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def base_fingerprint(model) -> str:
    """sha256 (16 hex digits) of the base U-Net's weights: a personalization trained on other weights
    (e.g. a LoRA of an older built-in ``ldm``) must not stand in for this model's."""
    unet = model.unet
    if unet not in _FINGERPRINTS:
        h = hashlib.sha256()
        for name, t in sorted(unet.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        _FINGERPRINTS[unet] = h.hexdigest()[:16]
    return _FINGERPRINTS[unet]


def _settings(ctx: ExperimentContext, config: PersonalizationConfig, method: str) -> dict[str, Any]:
    return {"model": ctx.model.name, "base_unet": base_fingerprint(ctx.model), "image_size": ctx.model.image_size,
            "method": method, "seed": config.run.seed, "identifier": config.identifier,
            "subject": [SUBJECT_SOURCE, [list(v) for v in TRAIN_VIEWS]],
            "sampler": config.run.sampler, "guidance": config.guidance, **dataclasses.asdict(getattr(config, method))}


def _cache_folder(ctx: ExperimentContext, config: PersonalizationConfig, method: str) -> Path | None:
    if ctx.cache_dir is None:
        return None
    key = hashlib.sha256(json.dumps(_settings(ctx, config, method), sort_keys=True).encode()).hexdigest()[:10]
    return Path(ctx.cache_dir) / "personalization" / f"{ctx.model.name}-{method}-{key}"


def _read(folder: Path, method: str, source: str) -> Personalized | None:
    rec_path = folder / "train.json"
    if not rec_path.is_file() or not (folder / ARTEFACT_FILES[method]).is_file():
        return None
    return Personalized(method, folder, json.loads(rec_path.read_text()), source)


def find_result(ctx: ExperimentContext, config: PersonalizationConfig, method: str) -> Personalized | None:
    """A result for this model trained with exactly these settings, shipped or cached; failing that,
    and only when not training (``ctx.train`` False), a shipped one trained with other settings
    (its source says so). With ``--train`` a method is thus trained at the config's settings rather
    than replaced by the shipped quick result."""
    from ..models import registry

    shipped = _read(registry.WEIGHTS_DIR / "personalization" / method, method, "shipped")
    if shipped is not None and (shipped.record.get("model") != ctx.model.name
                                or shipped.record.get("settings", {}).get("base_unet") != base_fingerprint(ctx.model)):
        shipped = None  # trained for another model, or for other weights of this one
    if shipped is not None and shipped.record.get("settings") == _settings(ctx, config, method):
        return shipped
    folder = _cache_folder(ctx, config, method)
    cached = _read(folder, method, "cache") if folder is not None else None
    if cached is not None:
        return cached
    if shipped is not None and not ctx.train:
        shipped.source = "shipped (other settings)"
        return shipped
    return None


def _working_copy(model) -> Any:
    """A LatentDiffusion sharing everything but a private U-Net (the base model stays untouched)."""
    return dataclasses.replace(model, unet=copy.deepcopy(model.unet), info=dict(model.info))


def train_method(ctx: ExperimentContext, config: PersonalizationConfig, method: str, inputs: dict[str, Any]) -> Personalized:
    """Train ``method`` on the subject now and store it in the cache (see the module doc)."""
    from ..personalize import (DreamBoothConfig, ImageSet, LoRATrainConfig, TextualInversionConfig, save_finetuned_weights,
                               train_dreambooth, train_lora, train_textual_inversion)
    from .architectures import PeakMemory

    folder = _cache_folder(ctx, config, method)
    if folder is None:
        raise ValueError("training personalization needs a cache folder (--cache DIR) to keep the result")
    folder.mkdir(parents=True, exist_ok=True)
    run, sec = config.run, getattr(config, method)
    model = _working_copy(ctx.model)
    images = ImageSet(inputs["images"] * 2 - 1)
    ident, noun = inputs["identifier"], inputs["class_noun"]
    common = dict(steps=sec.steps, lr=sec.lr, seed=run.seed, progress=ctx.show_progress, checkpoint_every=0)
    out = folder / ARTEFACT_FILES[method]
    t0 = time.perf_counter()
    with PeakMemory(ctx.device) as mem, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if method == "dreambooth":
            cfg = DreamBoothConfig(identifier=ident, class_noun=noun, instance_template=INSTANCE_TEMPLATE,
                                   class_template=CLASS_TEMPLATE, prior_weight=sec.prior_weight,
                                   num_class_images=sec.num_class_images, class_sampler=run.sampler,
                                   class_steps=sec.class_steps, class_guidance=config.guidance, **common)
            train_dreambooth(model, images, cfg, class_cache=Path(ctx.cache_dir) / "personalization" / "class-images")
            save_finetuned_weights(model, out, overwrite=True, base_unet=ctx.model.unet)  # 4-bit weight difference
        elif method == "lora":
            cfg = LoRATrainConfig(rank=sec.rank, lr_schedule=sec.lr_schedule, targets={"unet": sec.targets}, **common)
            train_lora(model, images, inputs["captions"], cfg, out=out, overwrite=True)
        elif method == "textual_inversion":
            cfg = TextualInversionConfig(token=sec.token, initializer=sec.initializer or noun, **common)
            train_textual_inversion(model, images, cfg, out=out, overwrite=True)
        else:
            raise ValueError(f"unknown personalization method {method!r}; choose one of {', '.join(METHOD_TITLES)}")
    seconds = time.perf_counter() - t0
    record = {"settings": _settings(ctx, config, method), "model": ctx.model.name, "seconds": round(seconds, 2),
              "peak_mib": round(mem.peak_bytes / 2**20, 1) if mem.peak_bytes is not None else None,
              "memory_method": mem.method, "device": str(ctx.device), "bytes": out.stat().st_size,
              "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "warnings": sorted({str(w.message) for w in caught})}
    with atomic_path(folder / "train.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return Personalized(method, folder, record, "trained now")


def apply_method(model, p: Personalized):
    """A copy of ``model`` with the personalization applied (the base model is not changed)."""
    from ..personalize import apply_lora, load_embedding_into_model, load_finetuned_weights

    m = _working_copy(model)
    if p.method == "dreambooth":
        load_finetuned_weights(m, p.file)
    elif p.method == "lora":
        apply_lora(m, p.file)
    elif p.method == "textual_inversion":
        token = p.record.get("settings", {}).get("token")
        load_embedding_into_model(m, p.file, token=token)
    else:
        raise ValueError(f"unknown personalization method {p.method!r}")
    return m


# --------------------------------------------------------------------------- evaluation
COLUMN_LABELS.setdefault("subject_fidelity_gain", "subject fidelity − base, paired ↑")
COLUMN_LABELS.setdefault("lpips_like_subject_gain", "LPIPS-like: base − method, paired ↑")
COLUMN_LABELS.setdefault("render_s", "sampling s (this run)")
COLUMN_LABELS.setdefault("cell_s", "cell s (this run)")


def _paired_gains(values: dict[str, list[float]], base: dict[str, list[float]]) -> dict[str, Any]:
    """Per-image paired differences to the base model (same prompt, same seed), summarized with a bootstrap
    CI: ``subject_fidelity_gain`` = method − base, ``lpips_like_subject_gain`` = base − method (↑ = closer)."""
    out = {}
    if "subject_fidelity" in values and "subject_fidelity" in base:
        out["subject_fidelity_gain"] = summarize([a - b for a, b in zip(values["subject_fidelity"], base["subject_fidelity"])])
    out["lpips_like_subject_gain"] = summarize([b - a for a, b in zip(values["lpips_like_subject"], base["lpips_like_subject"])])
    return out



def _render(model, prompt: str, config: PersonalizationConfig, show_progress: bool) -> Tensor:
    from ..pipelines.text2img import generate

    run = config.run
    return generate(model, prompt, guidance=config.guidance, steps=run.steps, sampler=run.sampler, seed=run.seed,
                    batch_size=run.images_per_cell, show_progress=show_progress).images


def _nearest_lpips(images: Tensor, subject: Tensor) -> Tensor:
    d = torch.stack([filter_bank_distance(images, s[None].expand_as(images)) for s in subject], 1)
    return d.min(1).values


def _evaluate_variant(ctx: ExperimentContext, config: PersonalizationConfig, name: str, model, inputs: dict[str, Any],
                      base_class: Tensor | None) -> tuple[dict[str, list[float]], list[dict], list[Tensor], dict]:
    """Render the prompts and the class prompt with one variant and measure them (see the module doc).

    Returns (per-image values pooled over prompts, per-prompt table rows, the rendered rows with the
    class prompt last, per-prompt metric summaries). ``base_class``: the base model's class-prompt
    pictures (None for the base model itself), against which drift is measured.
    """
    ident, noun, subject = inputs["identifier"], inputs["class_noun"], inputs["held_out"]
    token = config.textual_inversion.token
    values: dict[str, list[float]] = {}
    rows, images, per_prompt = [], [], {}
    for p in inputs["prompts"]:
        shown = _method_prompt(name, p, ident, noun, token)
        t0 = time.perf_counter()
        imgs = _render(model, shown, config, ctx.show_progress)
        render_s = time.perf_counter() - t0
        images.append(imgs)
        m = {"lpips_like_subject": _nearest_lpips(imgs, subject)}
        if ctx.evalenc is not None:
            m["subject_fidelity"] = ctx.evalenc.image_similarity(imgs, subject)
            m["prompt_fidelity"] = ctx.evalenc.prompt_scores(imgs, _without_identifier(p, ident))
        per_prompt[p] = {k: summarize(v) for k, v in m.items()}
        rows.append({"variant": name, "prompt": shown, **per_prompt[p], "cell_s": round(render_s, 2)})
        for k, v in m.items():
            values.setdefault(k, []).extend(v.tolist())
    class_imgs = _render(model, CLASS_TEMPLATE.format(class_noun=noun), config, ctx.show_progress)
    images.append(class_imgs)
    if base_class is not None:
        values["class_drift_lpips_like"] = filter_bank_distance(class_imgs, base_class).tolist()
        if ctx.evalenc is not None:
            a, b = ctx.evalenc.embed_images(class_imgs), ctx.evalenc.embed_images(base_class)
            values["class_drift"] = (100.0 * (1 - (a * b).sum(1))).tolist()
    return values, rows, images, {"prompts": per_prompt}


def _load_variants(ctx: ExperimentContext, config: PersonalizationConfig, inputs: dict[str, Any],
                   res: ExperimentResult) -> list[tuple[str, Any, Personalized | None]]:
    """The base model and each method's personalized copy (found, or trained with ``ctx.train``); a method
    with no usable result is recorded as skipped in ``res``."""
    variants: list[tuple[str, Any, Personalized | None]] = [("base", ctx.model, None)]
    for method in config.methods:
        found = find_result(ctx, config, method)
        if found is None and ctx.train:
            found = train_method(ctx, config, method, inputs)
            res.notes += [f"{METHOD_TITLES[method]} training: {w}" for w in found.record.get("warnings", [])]
        if found is None:
            res.skip(METHOD_TITLES[method], "no shipped or cached result for this model and these settings; train it "
                     "with `condiff experiment run personalization --train` (or `condiff demo --train`)")
            continue
        try:
            variants.append((method, apply_method(ctx.model, found), found))
        except (ValueError, OSError, RuntimeError) as err:
            res.skip(METHOD_TITLES[method], f"the {found.source} result in {found.folder} does not fit this model: {err}")
    return variants


def _method_entry(name: str, found: Personalized | None, summary: dict, rows: list[dict],
                  res: ExperimentResult) -> dict[str, Any]:
    """One row of the methods table: the summaries, this run's sampling time and the artefact's costs."""
    entry = {"variant": name, "method": METHOD_TITLES.get(name, "base model (no personalization)"),
             "source": found.source if found else "—", **summary,
             "render_s": round(sum(r["cell_s"] for r in rows), 1)}
    if found is not None:
        rec = found.record
        entry.update({"train_s": rec.get("seconds"), "train_peak_mib": rec.get("peak_mib"),
                      "file_bytes": found.file.stat().st_size, "steps": rec.get("settings", {}).get("steps")})
        res.measurements[name] = {k: rec.get(k) for k in ("seconds", "peak_mib", "memory_method", "device", "trained_at")}
    return entry


def _report(res: ExperimentResult, ctx: ExperimentContext, config: PersonalizationConfig, inputs: dict[str, Any],
            per_method: list[dict], per_prompt: list[dict], grids: list) -> None:
    """The picture grid, the two tables, the headlines and the bar chart of experiment 3."""
    prompts, token, noun, ident = inputs["prompts"], config.textual_inversion.token, inputs["class_noun"], inputs["identifier"]
    if grids:
        cols = list(prompts) + [f"{CLASS_TEMPLATE.format(class_noun=noun)} (drift check)"]
        res.figures.append(Figure("results_grid", "Base model and each method × the prompts (Figs. 4.18–4.20)", image_grid(
            [imgs for _, imgs in grids], row_labels=[METHOD_TITLES.get(n, "base") for n, _ in grids], col_labels=cols),
            f"Each cell: seeds {', '.join(map(str, config.run.seeds))}. Textual inversion writes '{token}' for "
            f"'{ident} {noun}'.", "grid"))
    cols = ["variant", "method", "source", "subject_fidelity", "subject_fidelity_gain", "lpips_like_subject",
            "lpips_like_subject_gain", "prompt_fidelity", "class_drift", "class_drift_lpips_like", "render_s", "train_s",
            "train_peak_mib", "file_bytes", "steps"]
    cols = [c for c in cols if any(c in e for e in per_method)]
    table = Table("methods", "Personalization methods (means over prompts × seeds)", cols, per_method,
                  feature_extractor=ctx.evalenc_name)
    table.notes.append("subject_fidelity: evalenc 100·cos to the three held-out views of the subject (never trained on); "
                       "…_gain: paired difference to the base model, same prompt and seed (bootstrap 95 % CI; an interval "
                       "above 0 = closer to the subject than the base); prompt_fidelity: evalenc prompt score without the "
                       "identifier; class_drift: change of the class prompt's pictures vs. the base model, same seeds "
                       "(0 = none). render_s: this run's sampling time of the variant's 3 prompt cells; train_s / train_peak_mib: "
                       "when the artefact was trained (source), vary between runs.")
    res.tables.append(table)
    pcols = ["variant", "prompt"] + [c for c in ("subject_fidelity", "prompt_fidelity", "lpips_like_subject", "cell_s")
                                     if any(c in r for r in per_prompt)]
    res.tables.append(Table("prompts", "Per prompt (means over seeds)", pcols, per_prompt, feature_extractor=ctx.evalenc_name))
    for key in ("subject_fidelity_gain", "lpips_like_subject_gain", "subject_fidelity", "prompt_fidelity", "class_drift"):
        if any(key in e for e in per_method):
            res.headlines.append(f"{COLUMN_LABELS[key]}: " + ", ".join(
                f"{e['method'] if e['variant'] != 'base' else 'base'} {fmt_summary(e.get(key))}" for e in per_method if key in e))
    costs = [e for e in per_method if "file_bytes" in e]
    if costs:
        res.headlines.append("cost: " + "; ".join(f"{e['method']} {_size(e['file_bytes'])}, trained {e['train_s']} s"
                                                   for e in costs))
    if per_method:
        names = [e["variant"] for e in per_method]
        panels = {COLUMN_LABELS[k]: [e.get(k) for e in per_method] for k in (
            "subject_fidelity", "prompt_fidelity", "class_drift", "lpips_like_subject") if any(k in e for e in per_method)}
        trained = [e for e in per_method if "file_bytes" in e]
        if trained:
            panels["training s"] = [summarize([e["train_s"]]) if e.get("train_s") is not None else None for e in per_method]
            panels["file size (bytes)"] = [summarize([e["file_bytes"]]) if "file_bytes" in e else None for e in per_method]
        res.figures.append(Figure("method_bars", "Per-method fidelity, drift and cost", plot_bars(
            names, panels, title="Personalization (means, 95 % CI)", log_panels=("file size (bytes)",)), "", "plot"))


def run_personalization(ctx: ExperimentContext, config: PersonalizationConfig) -> ExperimentResult:
    """Run experiment 3 (see the module doc)."""
    t_start = time.perf_counter()
    res = ExperimentResult("personalization", EXPERIMENT_TITLES["personalization"], to_dict(config),
                           seeds=config.run.seeds)
    inputs = subject_inputs(ctx.model.image_size, config)
    ident, noun, subject = inputs["identifier"], inputs["class_noun"], inputs["images"]
    res.figures.append(Figure("dataset", "The subject: five training views and three held-out views (Fig. 4.17)",
                              image_grid([[subject], [inputs["held_out"]]], row_labels=["trained on", "held out"],
                                         col_labels=[f"“{ident} {noun}” ({SUBJECT_SOURCE}, absent from all base training)"]),
                              f"Subject fidelity is measured against the held-out views only. LoRA captions: "
                              f"{inputs['captions'][0]}. Prompt kinds: {', '.join(PROMPT_KINDS)}.", "image"))
    variants = _load_variants(ctx, config, inputs, res)
    if ctx.evalenc is None:
        res.skip("evalenc metrics", "no evaluation encoder: subject/prompt fidelity and drift in evalenc space not measured")
    per_prompt, per_method, grids, base_class, base_values = [], [], [], None, {}
    metrics: dict[str, Any] = {}
    for name, model, found in variants:
        values, rows, images, metrics[name] = _evaluate_variant(ctx, config, name, model, inputs, base_class)
        if base_class is None:
            base_class = images[-1]
        per_prompt += rows
        grids.append((name, images))
        summary = {k: summarize(v) for k, v in values.items()}
        if name == "base":
            base_values = values
        else:
            summary.update(_paired_gains(values, base_values))
        metrics[name].update(summary)
        per_method.append(_method_entry(name, found, summary, rows, res))
        if "file_bytes" in per_method[-1]:
            metrics[name]["file_bytes"] = per_method[-1]["file_bytes"]
    res.metrics["variants"] = metrics
    _report(res, ctx, config, inputs, per_method, per_prompt, grids)
    res.wall_s = time.perf_counter() - t_start
    res.measurements["seconds"] = round(res.wall_s, 2)
    return res
