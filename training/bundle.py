"""What a GPU machine needs to train the built-in models or run the experiments, packed small enough to travel.

The GPU machine has no network and receives at most 64 MiB. :func:`make_bundle` writes:

* the data pack (``condiff data pack``; the world is rendered there with ``--from-pack``), when given;
* a compact fp16 copy of MiniLM (:func:`condiff.nn.text_encoder.export_compact`) holding the
  embedding rows of the texts it will be asked to encode, and refusing any other token:

  - every caption and concept prompt of that world (training, evaluation by concept ranking);
  - every text of the thesis's experiments (:func:`experiment_texts`, on by default): each string
    of the recipes in ``recipes/experiments/*.toml`` (full and ``[quick]``), the prompts of the
    shipped experiment inputs, and what experiment 3 generates from its config (DreamBooth's
    instance and class prompts, the LoRA captions, the prompts with and without the identifier
    "sks", textual inversion's templates around "<sks>" and its initializer word);
  - with ``--frequent``, the ~10k most frequent word pieces as well (about +7.7 MB, for prompts
    written later); off by default, as size matters.

    python -m training.bundle --pack build/world-pack-v1.json.xz --out .device

Without ``--pack`` only the experiments' texts are kept (a MiniLM for running experiments only).
On the GPU machine, ``CONDIFF_MINILM_COMPACT=.device/minilm`` makes condiff use the copy.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any, Iterable

from condiff.nn.text_encoder import export_compact

__all__ = ["make_bundle", "export_minilm", "bundle_texts", "world_texts", "experiment_texts", "FREQUENT_WORDPIECES"]

FREQUENT_WORDPIECES = range(1996, 12000)  # BERT uncased vocab: ids ≥ 1996 are word pieces by frequency
#: Keys of the shipped experiment inputs (experiments.json) whose values are texts for the model.
_INPUT_TEXT_KEYS = ("prompt", "prompts", "thesis_prompt", "thesis_prompts", "identifier", "class_noun")


def _strings(obj: Any, keys: Iterable[str] | None = None) -> list[str]:
    """Every string inside nested dicts/lists (only under ``keys`` of dicts, when given)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            if keys is None or k in keys:
                out += _strings(v)
            elif isinstance(v, (dict, list)):
                out += _strings(v, keys)
        return out
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _strings(v, keys)]
    return []


def world_texts(pack: str | Path, seed: int = 0, size: int = 128) -> set[str]:
    """Every caption and concept prompt ("a <concept>") of the world a pack renders."""
    from condiff.data.builder import VERSIONS, record_specs
    from condiff.data.captions import humanize
    from condiff.data.pack import read_pack

    version, sets = read_pack(pack)
    specs = record_specs(sets, seed=seed, size=size, n_figures=VERSIONS[version]["figures"], version=version)
    texts = {c for s in specs for c in s["captions"]}
    texts |= {f"a {humanize(s['concept'])}" for s in specs}
    return texts


def experiment_texts(recipes_dir: str | Path | None = None) -> list[str]:
    """Every text the thesis's experiments may give the text encoder (see the module doc)."""
    from condiff.data.experiment_inputs import EXPERIMENTS_DIR
    from condiff.data.shards import read_json
    from condiff.experiments.config import RECIPES_DIR, load_config
    from condiff.experiments.personalization import personalization_texts

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    recipes_dir = Path(recipes_dir) if recipes_dir is not None else RECIPES_DIR
    texts = [""]
    personalization = ["personalization"]  # the built-in defaults (or its recipe) ...
    for path in sorted(recipes_dir.glob("*.toml")):
        data = tomllib.loads(path.read_text())
        texts += _strings(data)
        if data.get("experiment") == "personalization":
            personalization.append(path)  # ... and every personalization recipe in the folder
    texts += _strings(read_json(EXPERIMENTS_DIR / "experiments.json"), _INPUT_TEXT_KEYS)
    for source in personalization:
        for quick in (False, True):
            texts += personalization_texts(load_config(source, experiment="personalization", quick=quick))
    return sorted(set(texts))


def bundle_texts(pack: str | Path | None = None, *, seed: int = 0, size: int = 128, experiments: bool = True) -> list[str]:
    """The texts a bundle's MiniLM keeps: the pack's world (when given) and the experiments (by default)."""
    texts: set[str] = set(world_texts(pack, seed, size)) if pack is not None else set()
    if experiments:
        texts |= set(experiment_texts())
    if not texts:
        raise ValueError("nothing to keep: give a pack and/or keep the experiments' texts")
    return sorted(texts)


def export_minilm(out: str | Path, pack: str | Path | None = None, *, seed: int = 0, size: int = 128,
                  experiments: bool = True, frequent: bool = False) -> Path:
    """Write the bundle's compact MiniLM into ``out`` (point CONDIFF_MINILM_COMPACT at it)."""
    texts = bundle_texts(pack, seed=seed, size=size, experiments=experiments)
    out = export_compact(out, texts, extra_ids=FREQUENT_WORDPIECES if frequent else ())
    mb = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    print(f"compact MiniLM: {len(texts)} distinct texts, {mb:.1f} MiB -> {out}")
    return out


def make_bundle(pack: str | Path | None, out: str | Path, seed: int = 0, size: int = 128, frequent: bool = False,
                experiments: bool = True) -> Path:
    """``out/minilm`` (:func:`export_minilm`) and a copy of the pack (when given)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    export_minilm(out / "minilm", pack, seed=seed, size=size, experiments=experiments, frequent=frequent)
    if pack is not None:
        shutil.copy2(pack, out / Path(pack).name)
    print(f"bundle -> {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", default=None, help="World pack (condiff data pack); omit for an experiments-only MiniLM.")
    p.add_argument("--out", required=True)
    p.add_argument("--frequent", action="store_true",
                   help="Also keep the ~10k most frequent word pieces (+7.7 MB), for prompts not known now.")
    p.add_argument("--no-experiments", action="store_true",
                   help="Leave out the texts of the experiments (recipes/experiments/*.toml, experiment 3's prompts).")
    a = p.parse_args(argv)
    make_bundle(a.pack, a.out, frequent=a.frequent, experiments=not a.no_experiments)


if __name__ == "__main__":
    main()
