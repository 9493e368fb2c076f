"""tools/adherence_paired.py: paired top-5 difference of two adherence runs over the same prompts."""

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "adherence_paired.py"


def _report(path, ranks, prompts=None):
    prompts = prompts or [f"prompt {i}" for i in range(len(ranks))]
    path.write_text(json.dumps({"prompts listed": [{"prompt": p, "rank generated": r} for p, r in zip(prompts, ranks)]}))
    return str(path)


def _run(*args):
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True)


def test_paired_difference_counts_and_interval(tmp_path):
    a = _report(tmp_path / "a.json", [0, 1, 7, 2] * 50)  # 3 of 4 in the top 5
    b = _report(tmp_path / "b.json", [0, 9, 7, 2] * 50)  # 2 of 4
    r = _run(a, b, "--out", str(tmp_path / "d.json"))
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "d.json").read_text())
    assert (d["a top5"], d["b top5"], d["a minus b"]) == (0.75, 0.5, 0.25)
    assert (d["prompts only a gets"], d["prompts only b gets"]) == (50, 0)
    assert d["ci95"][0] < 0.25 < d["ci95"][1] and d["ci95"][0] > 0  # only a ever wins: the interval excludes 0


def test_mismatched_or_unlisted_reports_are_refused(tmp_path):
    a = _report(tmp_path / "a.json", [0, 1])
    other = _report(tmp_path / "o.json", [0, 1], prompts=["x", "y"])
    assert "different prompts" in _run(a, other).stderr
    (tmp_path / "u.json").write_text(json.dumps({"adherence top5, generated": 0.5}))
    assert "--list" in _run(a, str(tmp_path / "u.json")).stderr
