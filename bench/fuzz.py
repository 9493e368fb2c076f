"""The long property-based hardening run (issue 22): tests/test_fuzz.py under its ``long`` profile.

    OMP_NUM_THREADS=1 python bench/fuzz.py [--examples 800] [--out bench/results/fuzz.json]

Each of the suite's 8 properties runs ``--examples`` generated cases (8 × 800 = 6,400 by default);
the counts by outcome (refused_input, refused_runtime, reached_compute, ok) and by input path are
written to ``--out`` with the wall time and the slowest case. Any case outside condiff's error
hierarchy, any half-written output or a case over the time bound fails the run (non-zero exit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=800, help="generated cases per property")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz.json")
    args = ap.parse_args()
    env = dict(os.environ, CONDIFF_FUZZ_PROFILE="long", CONDIFF_FUZZ_EXAMPLES=str(args.examples),
               CONDIFF_FUZZ_REPORT=str(args.out.resolve()), PYTHONPATH=str(ROOT))
    env.setdefault("OMP_NUM_THREADS", "1")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", str(ROOT / "tests" / "test_fuzz.py")]
    rc = subprocess.call(cmd, env=env, cwd=ROOT)
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    report.update(command=f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} python bench/fuzz.py --examples {args.examples}",
                  examples_per_property=args.examples, wall_s=round(time.time() - t0, 1), pytest_exit=rc,
                  passed=rc == 0, machine=f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
