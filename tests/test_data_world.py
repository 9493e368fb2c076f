"""The built-in world on the --small build: determinism, record completeness, checks, loader, CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from condiff.data.builder import build_world
from condiff.data.conditions import CONDITIONS, condition_maps
from condiff.data.experiment_inputs import EXCLUDED_FROM_TRAINING, load_held_out_images
from condiff.data.heldout import is_held_out
from condiff.data.loader import WorldDataset, drop_caption, flip_record, verify_world
from condiff.data.shards import read_json, read_npz
from condiff.data.sources import load_small_sets

torch.set_num_threads(2)


def _build(path, workers, **kw):
    return build_world(path, load_small_sets(), small=True, workers=workers, exclude=EXCLUDED_FROM_TRAINING,
                       held_out_images=load_held_out_images(), **kw)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    a = tmp_path_factory.mktemp("world_a")
    b = tmp_path_factory.mktemp("world_b")
    return (a, _build(a, workers=2)), (b, _build(b, workers=1))


def _records(root):
    m = read_json(root / "manifest.json")
    for sh in m["shards"]:
        arrays = read_npz(root / sh["file"])
        for i, meta in enumerate(read_json(root / sh["index"])):
            yield meta, {k: v[i] for k, v in arrays.items()}


def test_same_version_and_seed_give_byte_identical_shards(worlds):
    (a, ma), (b, mb) = worlds
    assert ma["shards"] == mb["shards"]  # sha256 of every shard and index, worker count does not matter
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    for sh in ma["shards"]:
        assert (a / sh["file"]).read_bytes() == (b / sh["file"]).read_bytes()


def test_another_seed_gives_another_world(tmp_path, worlds):
    (_, ma), _ = worlds
    m = _build(tmp_path, workers=1, seed=1, limit=6)
    first = read_json(tmp_path / m["shards"][0]["index"])
    base = read_json(worlds[0][0] / ma["shards"][0]["index"])
    assert [r["id"] for r in first] != [r["id"] for r in base[:6]]


def test_manifest_counts_and_checksums(worlds, tmp_path):
    (a, m), _ = worlds
    assert m["records"] == sum(s["records"] for s in m["shards"]) == 4 * 15 + 9 + 16
    assert set(m["styles"]) == {"twemoji", "noto", "openmoji", "fluent-flat", "clipart", "figure-flat", "figure-outline"}
    assert m["figures"] == 16 and m["backend"] in ("resvg", "cairosvg")
    verify_world(a)
    bad = tmp_path / "bad"
    shutil.copytree(a, bad)
    shard = bad / m["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        verify_world(bad)


def test_every_record_has_image_caption_style_and_six_conditions(worlds):
    (a, m), _ = worlds
    n_pose = 0
    for meta, rec in _records(a):
        assert rec["image"].shape == (128, 128, 3) and rec["image"].dtype == np.uint8
        assert rec["image"].min() < 200, f"{meta['id']} rendered blank"
        assert len(meta["captions"]) == 3 and len(set(meta["captions"])) == 3 and all(meta["captions"])
        assert meta["style"] in m["styles"] and meta["concept"] and meta["category"]
        conds = condition_maps(rec)
        assert list(conds) == list(CONDITIONS)
        for name, c in conds.items():
            assert c.shape == (128, 128, 3) and c.dtype == np.uint8, name
        for name in ("canny", "lineart", "softedge", "depth", "normal"):
            assert conds[name].std() > 0, f"{meta['id']}: empty {name}"
        assert set(np.unique(rec["regions"])) <= set(range(9)) and (rec["regions"] > 0).any()
        if meta["kind"] == "figure":
            n_pose += 1
            assert rec["has_pose"] == 1 and conds["pose"].max() > 0
            assert (rec["keypoints"][:, :2] >= 0).all() and (rec["keypoints"][:, :2] < 128).all()
        else:
            assert rec["has_pose"] == 0 and conds["pose"].max() == 0
    assert n_pose == 16


def test_depth_is_near_where_layers_stack(worlds):
    (a, _), _ = worlds
    for meta, rec in _records(a):
        bg = rec["regions"] == 0
        assert rec["depth"][bg].max() == 0 and rec["depth"].max() == 255, meta["id"]


def test_held_out_concept_absent_from_captions_and_images(worlds):
    (a, m), _ = worlds
    ho = m["held_out"]
    assert ho["caption_mentions"] == 0
    assert all(not is_held_out(c) for meta, _ in _records(a) for c in meta["captions"] + [meta["id"]])
    chk = ho["image_check"]
    assert chk["exact_matches"] == 0 and chk["max_cosine"] < chk["threshold"] and chk["passed"]
    assert chk["nearest"] is not None  # the horses of the small set are the closest look-alikes


def test_loader_yields_ranges_and_seeded_order(worlds):
    (a, _), _ = worlds
    ds = WorldDataset(a, masks=True, seed=3, caption_dropout=0.0)
    samples = list(ds)
    n = ds.manifest["records"]
    assert len(samples) == len(ds) == n
    s = samples[0]
    assert s["image"].shape == (3, 128, 128) and -1.0 <= s["image"].min() and s["image"].max() <= 1.0
    assert set(s["cond"]) == set(CONDITIONS)
    for c in s["cond"].values():
        assert c.shape == (3, 128, 128) and 0.0 <= c.min() and c.max() <= 1.0
    for x in samples:
        assert set(torch.unique(x["mask"]).tolist()) <= {0.0, 1.0}
        assert x["caption"] == x["caption_raw"] != ""
    assert not any(x["flipped"] for x in samples if x["concept"] == "left-arrow")
    again = [x["id"] for x in WorldDataset(a, seed=3, conditions=())]
    assert again == [x["id"] for x in samples]
    ds.set_epoch(1)
    assert [x["id"] for x in ds] != again


def test_loader_splits_between_workers_and_ranks(worlds):
    (a, _), _ = worlds
    ds = WorldDataset(a, conditions=("depth",), seed=0)
    dl = torch.utils.data.DataLoader(ds, batch_size=10, num_workers=2)
    ids = [i for b in dl for i in b["id"]]
    n = ds.manifest["records"]
    assert len(ids) == n and len(set(ids)) == n
    r0 = [x["id"] for x in WorldDataset(a, conditions=(), rank=0, world_size=2)]
    r1 = [x["id"] for x in WorldDataset(a, conditions=(), rank=1, world_size=2)]
    assert not set(r0) & set(r1) and len(r0) + len(r1) == n
    with pytest.raises(ValueError, match="unknown condition"):
        WorldDataset(a, conditions=("hed",))
    with pytest.raises(ValueError, match="unknown styles"):
        WorldDataset(a, styles=["vangogh"])


def test_caption_dropout_rate_and_hook(worlds):
    rng = np.random.default_rng(0)
    drops = sum(drop_caption("x", rng, 0.1) == "" for _ in range(20000))
    assert 0.09 < drops / 20000 < 0.11
    (a, _), _ = worlds
    ds = WorldDataset(a, conditions=(), caption_dropout=1.0, caption_hook=lambda c, meta, r: "sks " + c)
    x = next(iter(ds))
    assert x["caption"] == "" and x["caption_raw"].startswith("sks ")


def test_flip_swaps_figure_sides_and_crop_moves_keypoints(worlds):
    (a, _), _ = worlds
    meta, rec = next((m, r) for m, r in _records(a) if m["kind"] == "figure")
    f = flip_record(rec)
    assert np.array_equal(f["image"], rec["image"][:, ::-1])
    np.testing.assert_allclose(f["keypoints"][2, 0], 128 - rec["keypoints"][5, 0])  # right shoulder ← mirrored left
    np.testing.assert_allclose(f["keypoints"][0, 0], 128 - rec["keypoints"][0, 0])
    ds = WorldDataset(a, conditions=("pose",), crop=0.3, flip=False, caption_dropout=0.0, styles=["figure-flat"])
    x = next(iter(ds))
    assert x["cond"]["pose"].max() > 0


def test_cli_build_card_and_contact_sheet(worlds, tmp_path):
    import typer
    from typer.testing import CliRunner

    from condiff.commands.data import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["data", "build", "--small", "--out", str(tmp_path / "w"), "--limit", "4", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "w" / "manifest.json").read_text())["records"] == 4
    (a, _), _ = worlds
    res = runner.invoke(app, ["data", "card", str(a), "--out", str(tmp_path / "card.md")])
    assert res.exit_code == 0, res.output
    card = (tmp_path / "card.md").read_text()
    for needle in ("CC BY 4.0", "Apache 2.0", "MIT", "CC BY-SA 4.0", "Public Domain", "unicorn", "| records | 85 |"):
        assert needle in card
    res = runner.invoke(app, ["data", "contact-sheet", str(a), "--out", str(tmp_path / "sheet.png"), "--n", "3"])
    assert res.exit_code == 0, res.output
    from PIL import Image

    im = Image.open(tmp_path / "sheet.png")
    assert im.size == (8 * 128, 18 + 3 * (128 + 16))
