"""Experiments 1 and 2 start from pictures no model was trained on, and every output is checked for memorisation."""

import numpy as np
import pytest
import torch

from condiff.data.experiment_inputs import INPUT_STYLE, load_experiment_inputs
from condiff.data.heldout import is_eval_record
from condiff.data.sources import NPM_SETS, STYLE_OF_PREFIX
from condiff.experiments.memorisation import (TrainingIndex, load_training_index, memorisation_notes,
                                              nearest_training, thumbnails)


def _inputs():
    doc = load_experiment_inputs()
    named = {doc["exp1"]["source"] + " (reference)": doc["exp1"]["reference_image"],
             doc["exp1"]["source"] + " (sketch)": doc["exp1"]["sketch_image"]}
    named.update({t["source"] + f" ({t['name']})": t["image_array"] for t in doc["exp2"]})
    return doc, named


def test_inputs_come_from_a_vendor_absent_from_the_training_manifest():
    doc, _ = _inputs()
    index = load_training_index()
    trained_styles = {i.split("/")[0] for i in index.ids}
    assert INPUT_STYLE not in trained_styles and INPUT_STYLE not in set(STYLE_OF_PREFIX.values()) | set(NPM_SETS)
    sources = [doc["exp1"]["source"]] + [t["source"] for t in doc["exp2"]]
    assert all(s.startswith(f"{INPUT_STYLE}/") for s in sources)
    assert not set(sources) & set(index.ids)
    # the manifest holds training records only: no evaluation-split record, no held-out unicorn
    assert not any(is_eval_record(i) for i in index.ids[::50]) and not any("unicorn" in i for i in index.ids)
    assert len(index) > 15_000 and index.thumbs.shape[1:] == (16, 16, 3)


def test_no_input_is_a_copy_of_a_training_picture():
    _, named = _inputs()
    index = load_training_index()
    q = index.heldout_quantiles()
    rows = nearest_training(np.stack(list(named.values())), index)
    assert all(r["rmse"] > q["q05"] for r in rows), rows  # farther than 95 % of the world's held-out pictures are
    notes = memorisation_notes({k: torch.from_numpy(v).permute(2, 0, 1)[None].float() / 255 for k, v in named.items()},
                               index)
    assert "nearest" in notes[1] and f"{len(index):,}" in notes[0]


def test_nearest_training_finds_the_copy_at_distance_zero():
    rng = np.random.default_rng(0)
    pics = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    index = TrainingIndex([f"s/p{i}" for i in range(5)], thumbnails(pics), np.array([0.1, 0.2], np.float32))
    as_tensor = torch.from_numpy(pics[[3, 1]]).permute(0, 3, 1, 2).float() / 255
    rows = nearest_training(as_tensor, index)
    assert [r["nearest"] for r in rows] == ["s/p3", "s/p1"] and all(r["rmse"] == pytest.approx(0, abs=1e-6) for r in rows)
    shifted = nearest_training((as_tensor[:1] + 0.1).clamp(0, 1), index)[0]
    assert shifted["nearest"] == "s/p3" and 0.05 < shifted["rmse"] <= 0.1 + 1e-6


def test_shipped_coherence_measurement_covers_every_method_and_blend_with_paired_intervals():
    from condiff.experiments.coherence import BLENDS, METHODS, REFERENCE
    from condiff.experiments.context import ExperimentResult
    from condiff.experiments.inpainting import COHERENCE_FILE, _coherence_section

    res = ExperimentResult("inpainting", "t", {})
    _coherence_section(res, COHERENCE_FILE)
    names = [t.name for t in res.tables]
    assert names == ["coherence_heldout", "coherence_heldout_paired", "coherence_tasks", "coherence_tasks_paired"]
    held = res.tables[0]
    assert [r["method"] for r in held.rows] == [f"{m}/{b}" for m in METHODS for b in BLENDS]
    assert all(r["n"] >= 4 and r["kid"] for r in held.rows) and "n/a" not in str(held.rows)
    paired = res.tables[1]
    assert len(paired.rows) == len(METHODS) * len(BLENDS) - 1 and all(REFERENCE in r["method"] for r in paired.rows)
    assert all(len(r["lpips_like_fill"]["ci95"]) == 2 for r in paired.rows)
    assert "python -m condiff.experiments.coherence" in held.notes[0]
