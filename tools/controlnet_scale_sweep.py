"""Held-out adherence of shipped ControlNets at several conditioning scales (CPU or GPU).

    python tools/controlnet_scale_sweep.py --world build/world --kinds normal,lineart --scales 1,2 --n 32

Uses the job's own measurement (:func:`condiff.train.recipes.controlnet.evaluate_adherence`): the
ControlNet's output and the unconditioned model's output (same prompts and seeds) are re-run through
the condition's preprocessor and scored against the held-out condition. Needs a built world
(``condiff data build --from-pack PACK --out build/world``). Prints one JSON line per (kind, scale);
``--out`` writes them all as one JSON list.
"""

from __future__ import annotations

import argparse
import json
import time

from _report import add_output_options, check_output, write_output


def main() -> None:
    from condiff.models.registry import WEIGHTS_DIR, load_model
    from condiff.pipelines.control import load_controlnet_folder
    from condiff.train.recipes.controlnet import condition_bank, evaluate_adherence, records_for
    from condiff.train.recipes.world import load_world

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="build/world")
    p.add_argument("--kinds", default="normal,lineart")
    p.add_argument("--scales", default="1,2")
    p.add_argument("--n", type=int, default=32, help="held-out conditions per kind")
    p.add_argument("--steps", type=int, default=20)
    add_output_options(p)
    a = p.parse_args()
    check_output(a)
    rows = []
    model, world = load_model("builtin"), load_world(a.world)
    for kind in a.kinds.split(","):
        net = load_controlnet_folder(WEIGHTS_DIR / f"controlnet-{kind}")[0].eval()
        held = records_for(world, kind, "eval")[: a.n]
        cond = condition_bank(world, kind, held)
        for scale in (float(s) for s in a.scales.split(",")):
            t0 = time.time()
            rep = evaluate_adherence(model, net, kind, cond, [world.captions[i][0] for i in held.tolist()],
                                     keypoints=world.keypoints[held], masks=world.depth[held] > 0,
                                     references=world.images[held], scale=scale, steps=a.steps, batch_size=16)
            rows.append({"kind": kind, "scale": scale, "seconds": round(time.time() - t0, 1),
                         **{k: round(float(v), 4) if isinstance(v, (int, float)) else v
                            for k, v in rep.summary().items()}})
            print(json.dumps(rows[-1]), flush=True)
    write_output(a, rows)


if __name__ == "__main__":
    main()
