"""Augmentation of the text-to-image U-Net's training (condiff.train.recipes.ldm_augment, --ldm-augment)."""

import json

import pytest
import torch

from condiff.data.builder import build_world
from condiff.data.sources import load_small_sets
from condiff.train.recipes.job import run_job
from condiff.train.recipes.job_cli import main as job_main
from types import SimpleNamespace

from condiff.schedules import DiscreteSchedule
from condiff.train.recipes.latent import (TextToImageObjective, choose_flipped, encode_posteriors, pick_context,
                                          sample_latents)
from condiff.train.recipes.ldm_augment import add_augment_data, parse_ldm_augment


def test_parse_ldm_augment_reads_flip_and_plain_and_names_bad_items():
    assert parse_ldm_augment("flip,plain=0.2") == {"flip": True, "plain": 0.2}
    assert parse_ldm_augment("") == {}
    assert parse_ldm_augment("plain=0") == {}  # a no-op item is not recorded as an augmentation
    for text, message in (("mirror", "unknown item"), ("plain=x", "not a number"), ("plain=1.5", r"\[0, 1\)"),
                          ("flip=1", "unknown item")):
        with pytest.raises(ValueError, match=message):
            parse_ldm_augment(text)


def test_choose_flipped_mirrors_only_flippable_rows_about_half_of_the_time():
    n = 4000
    mean = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 4, 2, 2).contiguous()
    batch = {"mean": mean, "std": torch.zeros_like(mean), "mean_flip": -mean, "std_flip": torch.ones_like(mean),
             "flippable": torch.arange(n) % 2 == 0}
    m, s = choose_flipped(batch, torch.Generator().manual_seed(0))
    flipped = (m[:, 0, 0, 0] < 0) | ((m[:, 0, 0, 0] == 0) & (s[:, 0, 0, 0] == 1))
    assert not flipped[1::2].any()  # never a picture the world marks as not flippable
    assert 0.45 < flipped[0::2].float().mean() < 0.55
    assert torch.equal(s[:, 0, 0, 0] == 1, flipped)  # mean and std are taken from the same picture


def test_pick_context_uses_the_plain_prompt_with_its_probability_and_keeps_the_old_stream_without_it():
    b, k, length, d = 2000, 3, 2, 4
    bank = torch.randn(b, k, length, d)
    empty = torch.zeros(1, length, d)
    plain = torch.full((b, length, d), 7.0)
    base = pick_context(bank, empty, 0.1, torch.Generator().manual_seed(1))
    same = pick_context(bank, empty, 0.1, torch.Generator().manual_seed(1), plain, 0.0)
    assert torch.equal(base, same)  # p_plain = 0: the recipe without augmentation, draw for draw
    ctx = pick_context(bank, empty, 0.1, torch.Generator().manual_seed(1), plain, 0.3)
    is_plain = (ctx == 7.0).all(-1).all(-1).float().mean()
    is_empty = (ctx == 0.0).all(-1).all(-1).float().mean()
    assert 0.24 < is_plain < 0.30 and 0.07 < is_empty < 0.13  # 0.3 · 0.9 plain, 0.1 empty


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    build_world(folder, load_small_sets(), small=True, workers=1, limit=24)
    return folder


def test_job_trains_ldm_with_both_augmentations_and_records_them(world_dir, tmp_path):
    run_job(world_dir, tmp_path / "a", ["vae"], small=True, device="cpu")
    log = run_job(world_dir, tmp_path / "b", ["ldm"], small=True, device="cpu", init=tmp_path / "a" / "weights",
                  ldm_augment={"flip": True, "plain": 0.5})
    assert log["ldm"]["augment"] == {"flip": True, "plain": 0.5}
    card = json.loads((tmp_path / "b" / "weights" / "ldm" / "card.json").read_text())["card"]
    assert "Augmented" in card["summary"] and "plain" in card["summary"]
    with pytest.raises(SystemExit, match="unknown item"):
        job_main(["--world", str(world_dir), "--out", str(tmp_path / "c"), "--ldm-augment", "rotate"])
    with pytest.raises(ValueError, match="plain must lie"):
        run_job(world_dir, tmp_path / "d", ["ldm"], small=True, device="cpu", ldm_augment={"plain": 2.0})


class _PixelVAE:
    """Stands in for the VAE: the 'latent' is the picture itself, so a mirrored latent is visible as such."""

    def encode(self, x):
        return SimpleNamespace(mean=x, std=torch.ones_like(x))


def _fake_world(n=6):
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(
        images=torch.randint(0, 256, (n, 3, 4, 5), generator=g, dtype=torch.uint8),
        flippable=torch.tensor([True, False] * (n // 2)), concept_id=torch.arange(n) % 3,
        concepts=["cat face", "door", "traffic light"], concept_prompt=lambda c: f"a {c}")


def test_flipped_latents_encode_the_pictures_mirrored_left_to_right():
    world = _fake_world()
    mean, std = encode_posteriors(_PixelVAE(), world.images, "cpu", mirror=True, batch=4)
    expect = world.images.float().flip(-1) / 127.5 - 1
    assert torch.allclose(mean.float(), expect, atol=1e-2) and mean.dtype == torch.float16
    assert not torch.allclose(mean.float(), world.images.float() / 127.5 - 1, atol=1e-2)


def test_add_augment_data_lines_its_columns_up_with_the_training_rows():
    world = _fake_world()
    train = torch.tensor([True, True, False, True, False, True])
    data = {}
    plain = add_augment_data(data, {"flip": True, "plain": 0.2}, world, train, _PixelVAE(), "cpu")
    assert torch.equal(data["flippable"], world.flippable[train])
    assert torch.equal(data["concept"], world.concept_id[train])
    assert torch.allclose(data["mean_flip"].float(), world.images[train].float().flip(-1) / 127.5 - 1, atol=1e-2)
    assert plain.shape[0] == 3 and not torch.equal(plain[0], plain[1])  # one context per concept, distinct
    assert add_augment_data({}, {}, world, train, _PixelVAE(), "cpu") is None


def test_objective_without_augmentation_draws_exactly_what_the_recipe_drew_before():
    """Same generator, same loss: the augmentation hooks leave the unaugmented recipe's draws untouched."""
    calls = []

    class Loss:
        def __call__(self, denoiser, z, cond, g):
            calls.append((z, cond.context, torch.rand(1, generator=g)))
            return z.sum()

    b = 8
    batch = {"mean": torch.randn(b, 4, 2, 2), "std": torch.rand(b, 4, 2, 2), "ctx": torch.randn(b, 3, 5, 6)}
    empty = torch.zeros(1, 5, 6)
    obj = TextToImageObjective(None, DiscreteSchedule.named("scaled_linear", 1000), empty, 0.5)
    obj.loss = Loss()  # records what the objective hands to the ε-loss
    obj(None, batch, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the recipe as it was: latents, then caption choice and dropout
    z = sample_latents(batch["mean"], batch["std"], 0.5, g)
    ctx = pick_context(batch["ctx"], empty, 0.1, g)
    assert torch.equal(calls[0][0], z) and torch.equal(calls[0][1], ctx)
    assert torch.equal(calls[0][2], torch.rand(1, generator=g))  # the generator is left in the same state
