"""Where prompt adherence fails: the built-in text-to-image model's top-5 adherence on held-out prompts,
split by how many training pictures the requested concept has (CPU or GPU).

    python tools/adherence_breakdown.py --world build/world --n 200 --out docs/training/s6_cpu_adherence_breakdown.json

The evaluate stage's measurement (:mod:`condiff.train.recipes.evaluate`) on the shipped weights (or those
of the folder ``CONDIFF_WEIGHTS`` names): the first ``n`` prompts of its seeded held-out order (after
``--offset``), 20 DPM++ steps at the model's default guidance (or ``--steps``, ``--sampler``,
``--guidance``), seed 10 000 + j for the j-th prompt of the run (so with ``--offset`` the seeds are not those a
run from the start gives the same prompts); condiff-evalenc ranks all concept prompts for the generated
and for the real picture. Reported: the overall top-5 rates (they equal the model card's figure for the same ``n``),
the rates per training-count bucket (:func:`~condiff.train.recipes.evaluate.adherence_by_training_count`),
the miss overlap, and with ``--list`` every prompt's ranks and the generated picture's top concepts.
"""

from __future__ import annotations

import argparse
import json
import time

from _report import add_output_options, check_output, write_output


def main() -> None:
    import torch

    from condiff.models.registry import WEIGHTS_DIR, load_model
    from condiff.train.recipes.evaluate import (adherence_by_training_count, concept_ranks, eval_order, generate_many,
                                                load_evalenc)
    from condiff.train.recipes.world import load_world

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="build/world")
    p.add_argument("--n", type=int, default=200, help="held-out prompts (default 200, the issue's figure)")
    p.add_argument("--offset", type=int, default=0,
                   help="skip this many prompts of the held-out order first: e.g. --offset 1000 gives prompts "
                        "the reported first 1000 do not include, for choosing settings without touching them")
    p.add_argument("--steps", type=int, default=20, help="sampler steps (default 20, the model's default)")
    p.add_argument("--sampler", default="dpmpp_2m", help="sampler (default dpmpp_2m, the model's default)")
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: the model's, 5)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--list", action="store_true", help="also record every prompt's ranks and top concepts")
    add_output_options(p)
    a = p.parse_args()
    if a.n < 1 or a.batch < 1 or a.steps < 1 or a.offset < 0:
        raise SystemExit(f"--n, --batch and --steps must be positive and --offset not negative, got {a.n}, "
                         f"{a.batch}, {a.steps}, {a.offset}")
    check_output(a)
    world = load_world(a.world)
    ev = world.eval
    if a.offset + a.n > len(ev):
        raise SystemExit(f"--offset {a.offset} + --n {a.n} exceeds the {len(ev)} held-out pictures of {a.world}")
    from condiff.samplers.registry import sampler_info

    try:
        sampler_info(a.sampler)  # before the expensive part: an unknown name fails here, naming the choices
    except ValueError as err:
        raise SystemExit(str(err)) from None
    model = load_model("builtin", device=a.device)
    enc = load_evalenc(WEIGHTS_DIR / "evalenc", a.device)
    gamma = float(model.info.get("default_guidance", 5.0) if a.guidance is None else a.guidance)
    t0 = time.time()
    with torch.no_grad():
        concept_text = model.text_encoder.pooled([world.concept_prompt(c) for c in world.concepts]).float()
    idx = eval_order(ev)[a.offset:a.offset + a.n]
    truth = ev.concept_id[idx]
    prompts = [ev.captions[i][0] for i in idx]
    real = concept_ranks(enc, ev.images[idx].float() / 255, truth, concept_text)
    images = generate_many(model, prompts, guidance=gamma, sampler=a.sampler, steps=a.steps, batch=a.batch)
    gen = concept_ranks(enc, images, truth, concept_text)
    counts = torch.bincount(world.train.concept_id, minlength=len(world.concepts))[truth]
    rep: dict = {"prompts": a.n, "offset": a.offset, "sampler": a.sampler, "steps": a.steps, "guidance": gamma,
                 "concepts": len(world.concepts),
                 "adherence top5, generated": round(float((gen < 5).float().mean()), 4),
                 "adherence top5, real held-out pictures": round(float((real < 5).float().mean()), 4),
                 "by training pictures of the concept": adherence_by_training_count(gen, real, counts)}
    if a.list:
        with torch.no_grad():
            top = (enc(images.to(a.device)).float() @ concept_text.to(a.device).t()).topk(3, dim=1).indices.cpu()
        rep["prompts listed"] = [
            {"prompt": prompts[i], "concept": world.concepts[int(truth[i])], "training pictures": int(counts[i]),
             "rank generated": int(gen[i]), "rank real": int(real[i]),
             "generated top 3": [world.concepts[int(j)] for j in top[i]]} for i in range(a.n)]
    rep["seconds"] = round(time.time() - t0, 1)
    print(json.dumps({k: v for k, v in rep.items() if k != "prompts listed"}, indent=1))
    write_output(a, rep)


if __name__ == "__main__":
    main()
