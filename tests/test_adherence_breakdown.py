"""Prompt adherence by the concept's number of training pictures, and the `condiff eval` commands on the shipped model."""

import json

import pytest
import torch

from condiff.evaluation.adherence import adherence_by_training_count


def test_breakdown_splits_hits_by_training_count_and_counts_shared_misses():
    gen = torch.tensor([0, 9, 3, 7, 100, 1, 4, 5])
    real = torch.tensor([0, 0, 8, 2, 50, 0, 0, 9])
    counts = torch.tensor([0, 0, 1, 2, 4, 4, 12, 30])
    out = adherence_by_training_count(gen, real, counts)
    assert [out[k]["prompts"] for k in ("0 training pictures", "1-2 training pictures", "3-5 training pictures",
                                        "6-10 training pictures", "11+ training pictures")] == [2, 2, 2, 0, 2]
    assert out["0 training pictures"]["generated"]["mean"] == 0.5 and out["0 training pictures"]["real"]["mean"] == 1.0
    assert out["1-2 training pictures"]["generated"]["mean"] == 0.5 and out["1-2 training pictures"]["real"]["mean"] == 0.5
    assert out["11+ training pictures"]["generated"]["mean"] == 0.5 and out["11+ training pictures"]["real"]["mean"] == 0.5
    lo, hi = out["0 training pictures"]["generated"]["ci95"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    assert "generated" not in out["6-10 training pictures"]
    # generated misses (rank ≥ 5): 9, 7, 100, 5 → 4; real misses: 8, 50, 9 → 3; both: 100/50 and 5/9 → 2
    assert out["misses"] == {"generated": 4, "real": 3, "both": 2}


def test_breakdown_of_one_prompt_gives_a_rate_without_interval_and_custom_buckets_apply():
    out = adherence_by_training_count(torch.tensor([2]), torch.tensor([6]), torch.tensor([3]),
                                      buckets=((0, 3), (4, None)), top=3)
    assert out["0-3 training pictures"] == {"prompts": 1, "generated": {"mean": 1.0, "ci95": None},
                                            "real": {"mean": 0.0, "ci95": None}}
    assert out["4+ training pictures"] == {"prompts": 0}


def test_breakdown_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="equal-length 1-D"):
        adherence_by_training_count(torch.zeros(3), torch.zeros(2), torch.zeros(3))


# --------------------------------------------------------------------------- `condiff eval` on the shipped model


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    from condiff.data.builder import build_world
    from condiff.data.sources import load_small_sets

    folder = tmp_path_factory.mktemp("world")
    build_world(folder, load_small_sets(), small=True, workers=1, limit=24)
    return folder


def _eval(*args):
    from typer.testing import CliRunner

    from condiff import cli

    cli._register_commands()
    return CliRunner().invoke(cli.app, ["eval", *args])


@pytest.mark.slow  # the shipped model on the CPU (46 s measured on the shared 2-core machine under load)
def test_eval_adherence_lists_prompts_that_eval_paired_compares(world_dir, tmp_path):
    """`condiff eval adherence --list` on the shipped model: its report's figures agree with its own listing,
    and a run compared with itself differs by exactly zero."""
    from condiff.evaluation.world import load_world

    n = min(2, len(load_world(world_dir).eval))
    out = tmp_path / "a.json"
    res = _eval("adherence", "--world", str(world_dir), "--n", str(n), "--steps", "2", "--batch", "2", "--list",
                "--device", "cpu", "--out", str(out))
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    listed = rep["prompts listed"]
    assert rep["prompts"] == len(listed) == n and rep["steps"] == 2 and rep["guidance"] == 5.0
    assert rep["adherence top5, generated"] == round(sum(p["rank generated"] < 5 for p in listed) / n, 4)
    assert rep["adherence top5, real held-out pictures"] == round(sum(p["rank real"] < 5 for p in listed) / n, 4)
    assert _eval("paired", str(out), str(out)).exit_code == 0
    again = _eval("adherence", "--world", str(world_dir), "--n", str(n), "--out", str(out))
    assert again.exit_code != 0 and "exists" in str(again.exception)  # refused before anything is measured


def test_eval_adherence_refuses_more_prompts_than_held_out(world_dir):
    res = _eval("adherence", "--world", str(world_dir), "--n", "100000", "--steps", "1")
    assert res.exit_code != 0 and "held-out pictures" in str(res.exception)
    res = _eval("adherence", "--world", str(world_dir), "--sampler", "no-such-sampler")
    assert res.exit_code != 0


@pytest.mark.slow  # the shipped model and a ControlNet on the CPU (33 s measured under load)
def test_eval_controlnet_scale_reports_one_row_per_scale(world_dir, tmp_path):
    res = _eval("controlnet-scale", "--world", str(world_dir), "--kinds", "canny", "--scales", "0,1", "--n", "2",
                "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "c.json"))
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "c.json").read_text())
    assert [(r["kind"], r["scale"]) for r in rows] == [("canny", 0.0), ("canny", 1.0)]
    # at scale 0 the ControlNet adds nothing: its outputs are the baseline's (same prompts and seeds)
    assert rows[0]["edge F1 (controlnet)"] == rows[0]["edge F1 (baseline)"]
    assert _eval("controlnet-scale", "--scales", "one").exit_code != 0
