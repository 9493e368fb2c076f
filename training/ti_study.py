"""Textual-inversion study for experiment 3: which settings let the learned word carry the subject.

Trains textual inversion (eq. 3.18) on experiment 3's subject under each named setting and measures
it as the experiment does: subject fidelity (evalenc 100·cos) and LPIPS-like distance to the three
held-out views, each as the paired difference to the base model on the same prompts and seeds
(bootstrap 95 % interval). What varies: learning rate, steps, number of vectors, the prompt
templates around the placeholder (Gal et al.'s photo templates, or captions in the built-in world's
own wording) and the initializer word. Writes ``OUT/ti_study.json`` after every setting and each
embedding as ``OUT/<name>.safetensors``::

    python -m training.ti_study --device cuda --out runs/ti_study --images 8
    python -m training.ti_study --only shipped,world --steps-scale 0.1     # a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from condiff.experiments.config import PersonalizationConfig
from condiff.experiments.context import ExperimentContext, EvalEncoder, summarize
from condiff.experiments.personalization import (_evaluate_variant, _paired_gains, _working_copy, subject_inputs)
from condiff.experiments.runner import load_experiment_model
from condiff.personalize import ImageSet, TextualInversionConfig, train_textual_inversion
from condiff.personalize.train_common import diffusion_loss, encode_latents, prompt_cond

GAL = None  # the library's default object templates ("a photo of a {}", ...)
#: The same role in the built-in world's own caption wording (condiff.data.captions) with the subject's Noto
#: style words, so that the placeholder has to carry the subject, not the word "photo" or the style.
WORLD = ("a {}, glossy style", "{} emoji in noto style", "an emoji of a {}", "a {} icon, shaded style",
         "glossy illustration of a {}", "a picture of a {}, soft gradient style", "a {} drawn in noto style",
         "a {} on a white background, glossy emoji")
#: Prompts whose loss on the subject is measured for reference (the class, the identifier, no text at all).
REFERENCE_PROMPTS = ("a nrhp horse, glossy style", "a horse, glossy style", "a horse face, glossy style", "")
#: name → settings; "init" None = the class noun.
SETTINGS = {
    "shipped": dict(lr=5e-3, steps=400, vectors=1, templates=GAL, init=None),
    "world": dict(lr=5e-3, steps=400, vectors=1, templates=WORLD, init=None),
    "world-lr1e-3": dict(lr=1e-3, steps=400, vectors=1, templates=WORLD, init=None),
    "world-lr1e-3-1200": dict(lr=1e-3, steps=1200, vectors=1, templates=WORLD, init=None),
    "world-lr2e-2": dict(lr=2e-2, steps=400, vectors=1, templates=WORLD, init=None),
    "world-4vec": dict(lr=5e-3, steps=400, vectors=4, templates=WORLD, init=None),
    "world-4vec-1200": dict(lr=5e-3, steps=1200, vectors=4, templates=WORLD, init=None),
    "gal-lr1e-3": dict(lr=1e-3, steps=400, vectors=1, templates=GAL, init=None),
    "world-unicorn": dict(lr=5e-3, steps=400, vectors=1, templates=WORLD, init="unicorn"),
    "world-lr2e-4": dict(lr=2e-4, steps=400, vectors=1, templates=WORLD, init=None),
    "world-lr5e-4": dict(lr=5e-4, steps=400, vectors=1, templates=WORLD, init=None),
    "world-lr5e-4-4vec": dict(lr=5e-4, steps=400, vectors=4, templates=WORLD, init=None),
    "world-unicorn-lr2e-4": dict(lr=2e-4, steps=400, vectors=1, templates=WORLD, init="unicorn"),
    "world-unicorn-lr5e-4": dict(lr=5e-4, steps=400, vectors=1, templates=WORLD, init="unicorn"),
    "world-unicorn-lr1e-3": dict(lr=1e-3, steps=400, vectors=1, templates=WORLD, init="unicorn"),
    "unicorn-untrained": dict(lr=1e-9, steps=1, vectors=1, templates=WORLD, init="unicorn"),
    # "horse face": the base world's nearest concept (the Noto horse face), one vector per word piece
    "horseface-untrained": dict(lr=1e-9, steps=1, vectors=2, templates=WORLD, init="horse face"),
    "horseface-lr5e-4": dict(lr=5e-4, steps=400, vectors=2, templates=WORLD, init="horse face"),
    "horseface-lr2e-3": dict(lr=2e-3, steps=400, vectors=2, templates=WORLD, init="horse face"),
    "horseface-lr2e-4": dict(lr=2e-4, steps=400, vectors=2, templates=WORLD, init="horse face"),
    "horseface-gal-lr5e-4": dict(lr=5e-4, steps=400, vectors=2, templates=GAL, init="horse face"),
}


@torch.no_grad()
def fixed_loss(model, prompt: str, views: torch.Tensor, n: int = 48, seed: int = 0) -> float:
    """The training objective (eq. 3.18) of ``views`` [V, 3, S, S] in [0, 1] under ``prompt``, over ``n`` fixed
    draws of (t, ε): the same draws for every prompt and embedding, so the values compare."""
    z = encode_latents(model, views * 2 - 1)
    z = z.repeat(n // z.shape[0] + 1, 1, 1, 1)[:n]
    g = torch.Generator(device=z.device).manual_seed(seed)
    return round(float(diffusion_loss(model)(model.denoiser(), z, prompt_cond(model, [prompt] * n), g).mean()), 5)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("runs/ti_study"))
    p.add_argument("--images", type=int, default=8, help="pictures per prompt (seeds 0..N-1)")
    p.add_argument("--sampling-steps", type=int, default=12)
    p.add_argument("--only", default="", help="comma list of setting names (default: all)")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every setting's training steps")
    a = p.parse_args(argv)
    names = [n for n in (a.only.split(",") if a.only else SETTINGS) if n]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
    a.out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(a.device)
    model = load_experiment_model("builtin", dev)
    ctx = ExperimentContext(model, dev, EvalEncoder.builtin(dev), show_progress=False)
    cfg = PersonalizationConfig()
    cfg.run.images_per_cell, cfg.run.steps = a.images, a.sampling_steps
    inputs = subject_inputs(model.image_size, cfg)
    results = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
               "images_per_prompt": a.images, "sampling_steps": a.sampling_steps, "settings": {}}
    t0 = time.perf_counter()
    base_values, _, base_images, _ = _evaluate_variant(ctx, cfg, "base", model, inputs, None)
    results["base"] = {k: summarize(v) for k, v in base_values.items()}
    results["base_s"] = round(time.perf_counter() - t0, 1)
    results["reference_loss"] = {p: {"train": fixed_loss(model, p, inputs["images"]),
                                     "held_out": fixed_loss(model, p, inputs["held_out"])} for p in REFERENCE_PROMPTS}
    for name in names:
        s = SETTINGS[name]
        steps = max(1, round(s["steps"] * a.steps_scale))
        work = _working_copy(model)
        ti = TextualInversionConfig(token="<sks>", initializer=s["init"] or inputs["class_noun"], num_vectors=s["vectors"],
                                    templates=s["templates"], steps=steps, lr=s["lr"], seed=cfg.run.seed,
                                    progress=False, checkpoint_every=0)
        t0 = time.perf_counter()
        res = train_textual_inversion(work, ImageSet(inputs["images"] * 2 - 1), ti, out=a.out / f"{name}.safetensors",
                                      overwrite=True)
        train_s = time.perf_counter() - t0
        values, *_ = _evaluate_variant(ctx, cfg, "textual_inversion", work, inputs, base_images[-1])
        entry = {**{k: v for k, v in s.items() if k != "templates"}, "templates": "gal" if s["templates"] is GAL else "world",
                 "steps": steps, "train_s": round(train_s, 1), "final_loss": res.loop.history[-1].get("loss") if res.loop.history else None,
                 "vector_norm": float(res.embedding.vectors.norm(dim=-1).mean()),
                 "loss": {"train": fixed_loss(work, "a <sks>, glossy style", inputs["images"]),
                          "held_out": fixed_loss(work, "a <sks>, glossy style", inputs["held_out"])},
                 **{k: summarize(v) for k, v in values.items()}, **_paired_gains(values, base_values)}
        results["settings"][name] = entry
        (a.out / "ti_study.json").write_text(json.dumps(results, indent=1))
        g, l = entry["subject_fidelity_gain"], entry["lpips_like_subject_gain"]
        print(f"{name}: train {train_s:.0f} s; fidelity gain {g['mean']:.2f} {g['ci95']}; "
              f"LPIPS gain {l['mean']:.3f} {l['ci95']}", flush=True)


if __name__ == "__main__":
    main()
