"""Paired comparison of two adherence runs: per prompt, did the requested concept land in the evaluation
encoder's top 5 for model A and for model B; the mean difference with a bootstrap 95 % interval.

    python tools/adherence_paired.py A.json B.json [--out D.json]

A and B are ``tools/adherence_breakdown.py --list`` reports over the same prompts (same ``--offset`` and
``--n``); the interval is :func:`condiff.metrics.bootstrap.paired_bootstrap_ci` (10 000 resamples, seed 0).
Reported with the means: how many prompts only A gets and only B gets.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from _report import add_output_options, check_output, write_output


def hits(path: str) -> tuple[np.ndarray, list[str]]:
    report = json.loads(open(path).read())
    if "prompts listed" not in report:
        raise SystemExit(f"{path} has no per-prompt list; run tools/adherence_breakdown.py with --list")
    listed = report["prompts listed"]
    return np.array([p["rank generated"] < 5 for p in listed], float), [p["prompt"] for p in listed]


def main() -> None:
    from condiff.metrics.bootstrap import paired_bootstrap_ci

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a")
    p.add_argument("b")
    add_output_options(p)
    a = p.parse_args()
    check_output(a)
    (x, px), (y, py) = hits(a.a), hits(a.b)
    if px != py:
        raise SystemExit(f"{a.a} and {a.b} list different prompts; compare runs with the same --offset and --n")
    ci = paired_bootstrap_ci(x, y, n_resamples=10_000, seed=0)
    report = {"a": a.a, "b": a.b, "prompts": len(x), "a top5": round(float(x.mean()), 4),
              "b top5": round(float(y.mean()), 4), "a minus b": round(ci.mean, 4),
              "ci95": [round(ci.lo, 4), round(ci.hi, 4)],
              "prompts only a gets": int(((x == 1) & (y == 0)).sum()), "prompts only b gets": int(((x == 0) & (y == 1)).sum())}
    print(json.dumps(report, indent=1))
    write_output(a, report)


if __name__ == "__main__":
    main()
