"""The training job's command-line options, its data-parallel (torchrun) mode, and the evaluate stage's
inpainting masks."""

import json
import os
import subprocess
import sys

import pytest
import torch

from condiff.data.builder import build_world
from condiff.data.sources import load_small_sets
from condiff.nn.unet import UNet
from condiff.evaluation.inpainting import inpaint_eval_masks, subject_records
from training.job import JobContext
from training.job_options import check_job_options, check_parallel_order
from training.job_cli import parse_overrides
from training.latent import builtin_unet_config, inpaint_unet_from
from condiff.evaluation.world import load_world


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    build_world(folder, load_small_sets(), small=True, workers=1, limit=24)
    return folder


@pytest.fixture(scope="module")
def world(world_dir):
    return load_world(world_dir)


def test_overrides_parse_per_stage_and_reach_the_train_config(world, tmp_path):
    over = parse_overrides("ldm=5000,controlnet-normal=2000", "ldm=3e-4", "ldm=0.05")
    assert over == {"ldm": {"steps": 5000, "lr": 3e-4, "min_lr_ratio": 0.05}, "controlnet-normal": {"steps": 2000}}
    ctx = JobContext(world, tmp_path, torch.device("cpu"), overrides=over)
    cfg = ctx.train_config("ldm")
    assert (cfg.steps, cfg.lr, cfg.min_lr_ratio, cfg.warmup_steps) == (5000, 3e-4, 0.05, 200)
    assert ctx.train_config("vae").steps == 6000  # other stages keep their recipe
    assert parse_overrides("ldm=100", "", "").get("ldm") == {"steps": 100}
    assert JobContext(world, tmp_path, torch.device("cpu"), overrides=parse_overrides("ldm=100")).train_config("ldm").warmup_steps == 10


def test_batch_override_sets_the_global_batch(world, tmp_path):
    over = parse_overrides("", "", "", "ldm=1024")
    assert over == {"ldm": {"batch_size": 1024}}
    assert JobContext(world, tmp_path, torch.device("cpu"), overrides=over).train_config("ldm").batch_size == 1024


def test_seed_override_reaches_the_train_config_of_its_stage_only(world, tmp_path):
    over = parse_overrides("", "", "", "", "ldm=3")
    assert over == {"ldm": {"seed": 3}}
    ctx = JobContext(world, tmp_path, torch.device("cpu"), overrides=over)
    assert (ctx.train_config("ldm").seed, ctx.train_config("inpaint").seed) == (3, 0)


@pytest.mark.parametrize("args, message", [
    (("ldm",), "STAGE=VALUE"), (("ldm=many",), "not a valid value"), (("unet=10",), "unknown stage"),
    (("", "ldm=fast"), "not a valid value"), (("", "", "", "ldm=0"), "at least 1"),
    (("ldm=-5",), "at least 1"), (("", "", "", "", "ldm=-1"), "must not be negative"),
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


def test_single_process_stages_must_follow_the_data_parallel_ones():
    check_parallel_order(["vae", "ldm", "inpaint", "evaluate", "controlnet-canny"])
    check_parallel_order(["evaluate"])
    with pytest.raises(ValueError, match=r"\['evaluate'\] run on rank 0 only"):
        check_parallel_order(["ldm", "evaluate", "inpaint"])


def test_torchrun_job_trains_data_parallel_and_rank_zero_alone_exports(world_dir, tmp_path):
    """Two gloo processes on the CPU: one global batch split over them, one exported component."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "training.job", "--world", str(world_dir), "--out", str(tmp_path / "job"),
           "--small", "--device", "cpu", "--stages", "vae", "--batch", "vae=4"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    log = json.loads((tmp_path / "job" / "job_log.json").read_text())
    assert log["vae"]["processes"] == 2 and log["vae"]["batch_size"] == 4
    assert log["device"].startswith("2 × ")
    assert (tmp_path / "job" / "weights" / "vae" / "config.json").exists()
    assert run.stdout.count("[vae] 3 steps") == 1  # only rank 0 reports and exports
    card = json.loads((tmp_path / "job" / "weights" / "vae" / "card.json").read_text())["card"]
    assert "over 2 processes" in card["recipe"]


def test_dropout_option_is_checked_and_reaches_the_inpainting_unet():
    check_job_options({}, ("ldm",), None, {"ldm": 0.1, "inpaint": 0.0})
    with pytest.raises(ValueError, match=r"--dropout: probabilities must lie in \[0, 1\)"):
        check_job_options({}, (), None, {"inpaint": -0.1})
    with pytest.raises(ValueError, match="--dropout: stage"):
        check_job_options({}, (), None, {"evalenc": 0.1})
    inpaint = inpaint_unet_from(UNet(builtin_unet_config(decoder_depth=1, dropout=0.2)))
    assert inpaint.config.in_channels == 9 and inpaint.config.dropout == 0.2
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.2 for m in inpaint.modules())


def test_condiff_train_job_runs_the_training_package(world_dir, tmp_path):
    """`condiff train job` is the job's command line (the same options as ``python -m training.job``)."""
    from typer.testing import CliRunner

    from condiff import cli

    cli._register_commands()
    runner = CliRunner()
    res = runner.invoke(cli.app, ["train", "job", "--world", str(world_dir), "--out", str(tmp_path / "job"), "--small",
                                  "--device", "cpu", "--stages", "vae"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "job" / "weights" / "vae" / "config.json").exists()
    card = json.loads((tmp_path / "job" / "weights" / "vae" / "card.json").read_text())["card"]
    assert card["command"].startswith("condiff train job ")
    assert "--balance" in runner.invoke(cli.app, ["train", "job", "--help"]).output


def test_condiff_train_job_without_the_training_package_says_so(monkeypatch):
    """An installed wheel has no ``training`` package: one clear error instead of a traceback."""
    from condiff.commands.train import _training_job_main
    from condiff.errors import InputError

    monkeypatch.setitem(sys.modules, "training.job_cli", None)  # as if the package were absent
    with pytest.raises(InputError, match="source checkout"):
        _training_job_main()
