"""`condiff eval paired`: paired top-5 difference of two adherence runs over the same prompts."""

import json

from typer.testing import CliRunner

from condiff import cli

cli._register_commands()


def _report(path, ranks, prompts=None):
    prompts = prompts or [f"prompt {i}" for i in range(len(ranks))]
    path.write_text(json.dumps({"prompts listed": [{"prompt": p, "rank generated": r} for p, r in zip(prompts, ranks)]}))
    return str(path)


def _run(*args):
    return CliRunner().invoke(cli.app, ["eval", "paired", *args])


def test_paired_difference_counts_and_interval(tmp_path):
    a = _report(tmp_path / "a.json", [0, 1, 7, 2] * 50)  # 3 of 4 in the top 5
    b = _report(tmp_path / "b.json", [0, 9, 7, 2] * 50)  # 2 of 4
    r = _run(a, b, "--out", str(tmp_path / "d.json"))
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "d.json").read_text())
    assert (d["a top5"], d["b top5"], d["a minus b"]) == (0.75, 0.5, 0.25)
    assert (d["prompts only a gets"], d["prompts only b gets"]) == (50, 0)
    assert d["ci95"][0] < 0.25 < d["ci95"][1] and d["ci95"][0] > 0  # only a ever wins: the interval excludes 0
    assert json.loads(r.output) == d  # the report is also printed


def test_existing_output_is_refused_before_measuring(tmp_path):
    a = _report(tmp_path / "a.json", [0, 1])
    (tmp_path / "d.json").write_text("keep")
    r = _run(a, a, "--out", str(tmp_path / "d.json"))
    assert r.exit_code != 0 and (tmp_path / "d.json").read_text() == "keep"
    assert _run(a, a, "--out", str(tmp_path / "d.json"), "--overwrite").exit_code == 0
    assert json.loads((tmp_path / "d.json").read_text())["a minus b"] == 0.0


def test_mismatched_or_unlisted_reports_are_refused(tmp_path):
    a = _report(tmp_path / "a.json", [0, 1])
    other = _report(tmp_path / "o.json", [0, 1], prompts=["x", "y"])
    r = _run(a, other)
    assert r.exit_code != 0 and "different prompts" in str(r.exception)
    (tmp_path / "u.json").write_text(json.dumps({"adherence top5, generated": 0.5}))
    r = _run(a, str(tmp_path / "u.json"))
    assert r.exit_code != 0 and "--list" in str(r.exception)
