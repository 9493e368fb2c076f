"""``python -m condiff.data build …``: the world builder without the typer CLI.

For offline GPU machines that carry only numpy, opencv-python-headless, pillow, scipy, torch and
the ``resvg-py`` wheel (typer not needed)::

    python -m condiff.data build --from-pack build/world-pack-v1.json.xz --out build/world
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m condiff.data")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="render the world from a source pack or the vendored small set")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-pack", help="source pack written by `condiff data pack`")
    src.add_argument("--small", action="store_true", help="vendored small subset")
    b.add_argument("--out", required=True)
    b.add_argument("--version", default="1")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--size", type=int, default=128)
    b.add_argument("--workers", type=int, default=0)
    b.add_argument("--backend", default="auto")
    b.add_argument("--limit", type=int, default=None)
    a = p.parse_args(argv)

    from .builder import build_world
    from .experiment_inputs import EXCLUDED_FROM_TRAINING, load_held_out_images
    from .pack import read_pack
    from .sources import load_small_sets

    try:
        if a.small:
            sets = load_small_sets()
        else:
            pack_version, sets = read_pack(a.from_pack)
            if pack_version != a.version:
                raise ValueError(f"pack is for data-set version {pack_version}, not {a.version}")
        m = build_world(a.out, sets, version=a.version, seed=a.seed, size=a.size, small=a.small,
                        workers=a.workers or None, backend=a.backend, exclude=EXCLUDED_FROM_TRAINING,
                        held_out_images=load_held_out_images(), limit=a.limit)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{m['records']} records, {m['concepts']} concepts, {len(m['styles'])} styles, {len(m['shards'])} shards "
          f"({m['shard_bytes'] / 2**20:.1f} MiB) -> {a.out}")
    chk = m["held_out"]["image_check"]
    if chk is not None and not chk["passed"]:
        print(f"error: held-out concept leaked: {chk}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
