"""What a GPU machine needs to train the built-in models, packed small enough to travel.

The GPU machine has no network and receives at most 64 MiB. :func:`make_bundle` writes:

* the data pack (``condiff data pack``; the world is rendered there with ``--from-pack``);
* a compact fp16 copy of MiniLM (:func:`condiff.nn.text_encoder.export_compact`) holding the
  embedding rows of every caption and concept prompt of that world, plus the ~10k most frequent
  word pieces (for evaluation prompts written later).

    python -m condiff.train.recipes.bundle --pack build/world-pack-v1.json.xz --out .device
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ...data.builder import VERSIONS, record_specs
from ...data.captions import humanize
from ...data.pack import read_pack
from ...nn.text_encoder import export_compact

__all__ = ["make_bundle"]

FREQUENT_WORDPIECES = range(1996, 12000)  # BERT uncased vocab: ids ≥ 1996 are word pieces by frequency


def make_bundle(pack: str | Path, out: str | Path, seed: int = 0, size: int = 128, frequent: bool = False) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    version, sets = read_pack(pack)
    specs = record_specs(sets, seed=seed, size=size, n_figures=VERSIONS[version]["figures"], version=version)
    captions = {c for s in specs for c in s["captions"]}
    captions |= {f"a {humanize(s['concept'])}" for s in specs}
    export_compact(out / "minilm", sorted(captions), extra_ids=FREQUENT_WORDPIECES if frequent else ())
    shutil.copy2(pack, out / Path(pack).name)
    print(f"{len(specs)} records, {len(captions)} distinct texts -> {out}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    make_bundle(a.pack, a.out)


if __name__ == "__main__":
    main()
