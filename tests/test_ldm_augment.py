"""Augmentation of the text-to-image U-Net's training (condiff.train.recipes.ldm_augment, --ldm-augment)."""

import json

import pytest
import torch

from condiff.data.builder import build_world
from condiff.data.sources import load_small_sets
from condiff.train.recipes.job import run_job
from condiff.train.recipes.job_cli import main as job_main
from condiff.train.recipes.latent import pick_context
from condiff.train.recipes.ldm_augment import choose_flipped, parse_ldm_augment


def test_parse_ldm_augment_reads_flip_and_plain_and_names_bad_items():
    assert parse_ldm_augment("flip,plain=0.2") == {"flip": True, "plain": 0.2}
    assert parse_ldm_augment("") == {}
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
