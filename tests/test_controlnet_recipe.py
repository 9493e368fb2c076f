"""ControlNet training recipe: locked base, condition maps from the world, adherence scoring, the job stage."""

import json

import numpy as np
import pytest
import torch

from condiff.data.builder import build_world
from condiff.data.sources import load_small_sets
from condiff.denoisers import eps_denoiser
from condiff.nn.autoencoder import AutoencoderConfig, AutoencoderKL
from condiff.nn.unet import UNet, UNetConfig
from condiff.pipelines.control import load_controlnet_folder
from condiff.preprocess import canny, softedge
from condiff.schedules import DiscreteSchedule
from condiff.train.loop import TrainConfig, Trainer
from condiff.evaluation.control import AdherenceReport, condition_bank, records_for, score_adherence
from condiff.evaluation.world import load_world
from training.controlnet import ControlNetObjective, controlnet_for, stage_controlnet
from training.export import export_component


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny networks: see conftest.single_thread


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    build_world(folder, load_small_sets(), small=True, workers=1)
    return load_world(folder)


def tiny_unet(context_dim=8, sample_size=8):
    torch.manual_seed(0)
    return UNet(UNetConfig(in_channels=4, out_channels=4, sample_size=sample_size, block_out_channels=(16, 32),
                           attention_levels=(False, True), layers_per_block=1, num_attention_heads=2,
                           cross_attention_dim=context_dim, norm_num_groups=8))


def test_objective_trains_only_the_controlnet_and_starts_at_the_base_loss():
    unet = tiny_unet().eval()
    schedule = DiscreteSchedule.named("scaled_linear", 1000)
    with pytest.raises(ValueError, match="locked"):
        ControlNetObjective(unet, schedule, torch.zeros(1, 4, 8), 1.0)
    unet.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    batch = {"mean": torch.randn(8, 4, 8, 8, generator=g), "std": torch.full((8, 4, 8, 8), 0.1),
             "ctx": torch.randn(8, 2, 4, 8, generator=g).half(),
             "cond": torch.randint(0, 256, (8, 3, 16, 16), generator=g, dtype=torch.uint8)}
    obj = ControlNetObjective(unet, schedule, torch.zeros(1, 4, 8), 1.0)
    net = controlnet_for(unet, 2)
    base = ControlNetObjective(unet, schedule, torch.zeros(1, 4, 8), 1.0)
    base.denoiser = lambda controlnet, image: eps_denoiser(unet, schedule)  # the locked model alone
    assert torch.equal(obj(net, batch, torch.Generator().manual_seed(5)), base(net, batch, torch.Generator().manual_seed(5)))
    unet_before = {k: v.clone() for k, v in unet.state_dict().items()}
    cn_before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = TrainConfig(steps=3, batch_size=8, lr=1e-3, ema_decay=0.0, log_every=1, progress=False)
    Trainer(net, obj, batch, cfg, device="cpu").fit()
    assert all(torch.equal(unet_before[k], v) for k, v in unet.state_dict().items())
    assert all(not p.requires_grad for p in unet.parameters())
    assert net.controlnet_mid_block.weight.abs().max() > 0  # the zero convolutions learned
    changed = [k for k, v in net.state_dict().items() if not torch.equal(cn_before[k], v)]
    assert any(k.startswith("down_blocks") for k in changed)  # the encoder copy too (after step 1)
    after = obj(net, batch, torch.Generator().manual_seed(5))
    assert not torch.equal(after, base(net, batch, torch.Generator().manual_seed(5)))


def test_condition_maps_come_from_the_world_arrays(world):
    train = records_for(world, "canny", "train")
    assert not world.is_eval[train].any()
    pose_train = records_for(world, "pose", "train")
    assert len(pose_train) > 0 and world.has_pose[pose_train].all() and not world.is_eval[pose_train].any()
    emoji = (~world.has_pose).nonzero().squeeze(1)[:2]
    idx = torch.cat([emoji, pose_train[:2]])
    images = [world.images[i].permute(1, 2, 0).numpy() for i in idx]
    maps = {k: condition_bank(world, k, idx, workers=2) for k in ("canny", "lineart", "softedge", "depth", "normal", "pose")}
    for kind, m in maps.items():
        assert m.shape == (4, 3, 128, 128) and m.dtype == torch.uint8, kind
    assert all(np.array_equal(maps["canny"][j].permute(1, 2, 0).numpy(), canny(images[j])) for j in range(4))
    assert set(maps["canny"].unique().tolist()) == {0, 255}
    assert all(np.array_equal(maps["softedge"][j].permute(1, 2, 0).numpy(), softedge(images[j])) for j in range(4))
    assert torch.equal(maps["lineart"][:, 0], world.lineart[idx]) and torch.equal(maps["lineart"][:, 2], world.lineart[idx])
    assert torch.equal(maps["depth"][:, 1], world.depth[idx])
    flat = maps["normal"][:, :, 0, 0]  # a background corner: normal (0, 0, 1) -> (128, 128, 255)
    assert torch.equal(flat, torch.tensor([[128, 128, 255]] * 4, dtype=torch.uint8))
    assert (maps["normal"].float().std() > 5) and maps["pose"][:2].max() == 0 and maps["pose"][2:].amax((1, 2, 3)).min() > 0


def test_adherence_scores_the_reference_as_exact_and_noise_as_poor(world):
    idx = records_for(world, "canny", "eval")[:3]
    ref = world.images[idx].float() / 255
    cond = condition_bank(world, "canny", idx).float() / 255
    exact = score_adherence("canny", ref, cond)["edge F1"]
    noise = score_adherence("canny", torch.rand(ref.shape, generator=torch.Generator().manual_seed(0)), cond)["edge F1"]
    assert torch.all(exact == 1) and noise.max() < 0.5
    fig = records_for(world, "pose", "eval")[:2]
    pose_ref = score_adherence("pose", world.images[fig].float() / 255, condition_bank(world, "pose", fig).float() / 255,
                               keypoints=world.keypoints[fig])
    blank = score_adherence("pose", torch.ones(2, 3, 128, 128), condition_bank(world, "pose", fig).float() / 255,
                            keypoints=world.keypoints[fig])
    assert pose_ref["pose PCK@0.1"].mean() > 0.5 and torch.all(blank["pose PCK@0.1"] == 0)
    assert torch.all(blank["pose found"] == 0)
    with pytest.raises(ValueError, match="keypoints"):
        score_adherence("pose", ref[:2], ref[:2])


def _tiny_base(folder):
    """A random built-in-shaped base model (f=4 VAE, MiniLM-width U-Net) exported as --init components."""
    torch.manual_seed(0)
    vcfg = AutoencoderConfig(block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4, sample_size=128,
                             scaling_factor=1.0)
    export_component(AutoencoderKL(vcfg), folder / "vae", kind="autoencoder", network_config=vcfg.to_dict(),
                     extra={"scaling_factor": 1.0})
    unet = tiny_unet(context_dim=384, sample_size=32)
    export_component(unet, folder / "ldm", kind="unet", network_config=unet.config.to_dict(),
                     extra={"schedule": {"name": "scaled_linear", "steps": 1000}, "prediction": "eps",
                            "text_max_length": 24, "default_guidance": 5.0})


def test_stage_trains_evaluates_and_exports_an_int8_controlnet(world, tmp_path):
    from training.job import JobContext

    _tiny_base(tmp_path / "init")
    ctx = JobContext(world, tmp_path / "out", torch.device("cpu"), small=True, init=tmp_path / "init")
    stage_controlnet(ctx, "pose")
    folder = tmp_path / "out" / "weights" / "controlnet-pose"
    config = json.loads((folder / "config.json").read_text())
    assert config["kind"] == "controlnet" and config["condition"] == "pose" and config["caption_dropout"] == 0.5
    net, _ = load_controlnet_folder(folder)
    assert net.controlnet_config.condition_downsampling == 4 and net.controlnet_mid_block.weight.abs().max() > 0
    log = ctx.log["controlnet-pose"]
    assert log["steps"] == 10 and log["train_records"] == int((world.has_pose & ~world.is_eval).sum())
    assert log["held-out conditions"] == 4
    for source in ("controlnet", "baseline", "reference"):
        assert 0 <= log[f"pose PCK@0.1 ({source})"] <= 1
    assert log["pose PCK@0.1 (reference)"] > 0.5  # the true figures are found by the same estimator
    assert 0 < log["int8 vs fp32 ε relative error"] < 0.05
    card = (folder / "MODEL_CARD.md").read_text()
    assert "pose PCK@0.1 (baseline)" in card and "int8" in card
    with pytest.raises(ValueError, match="unknown condition"):
        stage_controlnet(ctx, "sketch")


def test_stage_takes_the_job_overrides_of_steps_and_learning_rate(world, tmp_path):
    from training.job import JobContext

    _tiny_base(tmp_path / "init")
    over = {"controlnet-canny": {"steps": 4, "lr": 3e-4, "min_lr_ratio": 0.0}}
    ctx = JobContext(world, tmp_path / "out", torch.device("cpu"), small=True, init=tmp_path / "init", overrides=over)
    stage_controlnet(ctx, "canny")
    log = ctx.log["controlnet-canny"]
    assert log["steps"] == 4 and log["lr"] == 3e-4


def test_report_gives_the_paired_difference_over_conditions_where_both_are_defined():

    rep = AdherenceReport("depth", 5)
    rep.scores["depth AbsRel"] = {"controlnet": torch.tensor([0.1, 0.2, float("nan"), 0.3, 0.2]),
                                  "baseline": torch.tensor([0.3, 0.4, 0.5, float("nan"), 0.4])}
    mean, lo, hi = rep.paired_difference()
    assert mean == pytest.approx(-0.2) and lo == pytest.approx(-0.2) and hi == pytest.approx(-0.2)
    assert rep.improved()  # lower AbsRel is better
    assert rep.summary()["depth AbsRel: controlnet − baseline (paired, 95 % CI)"] == "-0.2000 [-0.2000, -0.2000]"
    rep.scores["depth AbsRel"]["baseline"] = torch.tensor([0.3, 0.1, 0.5, 0.3, 0.1])
    mean, lo, hi = rep.paired_difference()
    assert mean == pytest.approx(0.0, abs=1e-6) and lo < 0 < hi
