"""The training job's command-line options and the evaluate stage's inpainting masks."""

import pytest
import torch

from condiff.data.builder import build_world
from condiff.data.sources import load_small_sets
from condiff.train.recipes.evaluate import inpaint_eval_masks, subject_records
from condiff.train.recipes.job import JobContext, parse_overrides
from condiff.train.recipes.world import load_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    build_world(folder, load_small_sets(), small=True, workers=1, limit=24)
    return load_world(folder)


def test_overrides_parse_per_stage_and_reach_the_train_config(world, tmp_path):
    over = parse_overrides("ldm=5000,controlnet-normal=2000", "ldm=3e-4", "ldm=0.05")
    assert over == {"ldm": {"steps": 5000, "lr": 3e-4, "min_lr_ratio": 0.05}, "controlnet-normal": {"steps": 2000}}
    ctx = JobContext(world, tmp_path, torch.device("cpu"), overrides=over)
    cfg = ctx.train_config("ldm")
    assert (cfg.steps, cfg.lr, cfg.min_lr_ratio, cfg.warmup_steps) == (5000, 3e-4, 0.05, 200)
    assert ctx.train_config("vae").steps == 6000  # other stages keep their recipe
    assert parse_overrides("ldm=100", "", "").get("ldm") == {"steps": 100}
    assert JobContext(world, tmp_path, torch.device("cpu"), overrides=parse_overrides("ldm=100")).train_config("ldm").warmup_steps == 10


@pytest.mark.parametrize("args, message", [
    (("ldm",), "STAGE=VALUE"), (("ldm=many",), "not a valid value"), (("unet=10",), "unknown stage"),
    (("", "ldm=fast"), "not a valid value"),
])
def test_malformed_overrides_name_the_option_and_the_problem(args, message):
    with pytest.raises(SystemExit, match=message):
        parse_overrides(*args)


def test_box_mask_is_the_centre_quarter_and_subject_mask_covers_the_dilated_subject(world):
    idx = list(range(len(world.eval)))
    box = inpaint_eval_masks(world.eval, idx[:2], "box")
    assert box.shape == (2, 1, 128, 128) and float(box.mean()) == 0.25 and box[0, 0, 64, 64] == 1
    subject = inpaint_eval_masks(world.eval, idx, "subject", dilate=3)
    fg = world.eval.regions[idx] > 0
    assert torch.all(subject[:, 0][fg] == 1)  # the whole subject is repainted …
    assert float(subject.mean()) > float(fg.float().mean())  # … with a margin around it
    assert float(subject.mean()) < 1.0
    with pytest.raises(ValueError, match="unknown inpainting mask"):
        inpaint_eval_masks(world.eval, idx, "ellipse")


def test_subject_records_keep_only_masks_of_usable_size(world):
    order = list(range(len(world.eval)))
    keep = subject_records(world.eval, order, len(order))
    areas = {i: float(inpaint_eval_masks(world.eval, [i], "subject").mean()) for i in order}
    assert keep == [i for i in order if 0.05 <= areas[i] <= 0.7]
    assert keep, "the small world should hold pictures with a usable subject"
    assert subject_records(world.eval, order, 1) == keep[:1]
