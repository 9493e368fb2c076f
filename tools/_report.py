"""What the measurement scripts in tools/ share: the ``--out/--overwrite`` options and the atomic JSON write."""

from __future__ import annotations

import argparse
import json


def add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="JSON file to write (never overwritten without --overwrite)")
    p.add_argument("--overwrite", action="store_true")


def check_output(a: argparse.Namespace) -> None:
    """Fail before the measurement, not after it, when ``--out`` exists and ``--overwrite`` is not given."""
    from condiff.io import check_writable

    if a.out:
        try:
            check_writable(a.out, a.overwrite)
        except FileExistsError as err:
            raise SystemExit(str(err)) from None


def write_output(a: argparse.Namespace, report: dict | list) -> None:
    from condiff.io import atomic_path

    if a.out:
        with atomic_path(a.out) as tmp:
            tmp.write_text(json.dumps(report, indent=1))
