"""Experiment 3's subject: training views, held-out views and what the shipped results were trained on (issue 27)."""

import json

import pytest
import torch

from condiff.data.heldout import HELD_OUT, is_held_out
from condiff.experiments.config import load_config
from condiff.experiments.personalization import (HELD_OUT_VIEWS, SUBJECT_SOURCE, TRAIN_VIEWS, subject_inputs,
                                                 subject_texts, subject_view)
from condiff.models import registry


def test_held_out_views_are_never_training_views():
    inp = subject_inputs(64)
    train, held = inp["images"], inp["held_out"]
    assert train.shape == (len(TRAIN_VIEWS), 3, 64, 64) and held.shape == (len(HELD_OUT_VIEWS), 3, 64, 64)
    assert not set(HELD_OUT_VIEWS) & set(TRAIN_VIEWS)
    # every held-out view differs visibly from every training view (not a copy, not a flip of one)
    for h in held:
        for t in torch.cat([train, train.flip(-1)]):
            assert ((h - t).abs().amax(0) > 0.1).float().mean() > 0.03  # > 3 % of the pixels differ
    # the subject concept is excluded from every base model's training data by name
    assert is_held_out(SUBJECT_SOURCE.split("/")[1]) and HELD_OUT.class_noun == inp["class_noun"]


def test_subject_view_geometry():
    img = torch.zeros(3, 32, 32)
    img[:, 8:24, 4:12] = 1.0  # a bar left of centre, on black
    assert torch.allclose(subject_view(img, 0.0, 1.0, False, 0.0, 0.0), img, atol=1e-5)
    mirrored = subject_view(img, 0.0, 1.0, True, 0.0, 0.0)
    assert torch.allclose(mirrored, img.flip(-1), atol=1e-5)
    small = subject_view(torch.zeros(3, 32, 32), 0.0, 0.5, False, 0.0, 0.0)
    assert small[:, 0, 0].eq(1).all() and small[:, 16, 16].eq(0).all()  # uncovered corners are white


def test_prompts_express_the_three_kinds_with_the_identifier():
    cfg = load_config("personalization")
    t = subject_texts(cfg)
    assert t["identifier"] == cfg.identifier == "nrhp" and len(t["prompts"]) == 3
    assert all(f"{cfg.identifier} {t['class_noun']}" in p for p in t["prompts"])
    assert all(cfg.identifier not in c.replace(f"{cfg.identifier} {t['class_noun']}", "") for c in t["captions"])


@pytest.mark.parametrize("method", ["dreambooth", "lora", "textual_inversion"])
def test_shipped_results_were_trained_on_the_training_views_only(method):
    folder = registry.WEIGHTS_DIR / "personalization" / method
    if not (folder / "train.json").is_file():
        pytest.skip(f"no shipped {method} result")
    settings = json.loads((folder / "train.json").read_text())["settings"]
    assert settings["subject"] == [SUBJECT_SOURCE, [list(v) for v in TRAIN_VIEWS]]
    assert not any(list(v) in settings["subject"][1] for v in HELD_OUT_VIEWS)
    assert settings["identifier"] == load_config("personalization").identifier


def test_readme_personalization_example_uses_only_what_it_made():
    """The README's personalization lines run as written from a fresh clone: every picture folder, LoRA,
    embedding and DreamBooth file is made by an earlier line, and each embedding names its trained token."""
    import glob
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    lines = [ln.split("  #")[0] for ln in (root / "README.md").read_text().splitlines()
             if "personalize " in ln or "--embedding" in ln or "--lora" in ln or "my5" in ln]
    made, tokens = set(), {}
    assert any("--embedding" in ln for ln in lines) and any("personalize dreambooth" in ln for ln in lines)
    for ln in lines:
        if ln.startswith("mkdir"):
            src = re.search(r"cp (\S+) my5/", ln).group(1)
            assert glob.glob(str(root / src)), src
            made.add("my5/")
            continue
        args = shlex.split(ln)
        opt = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
        if opt.get("--out", "").startswith("my5/"):  # pictures written into the subject folder
            made.add("my5/")
            continue
        if args[1] == "personalize":
            assert opt["--images"] in made
            made.add(opt["--out"])
            tokens[opt["--out"]] = opt.get("--token")
        else:
            if "--embedding" in opt:
                file, _, token = opt["--embedding"].rpartition(":")
                assert file in made and tokens[file] == token and token in args[2]
            if "--lora" in opt:
                file = opt["--lora"].rpartition(":")[0]
                assert file in made and tokens[file] in args[2]
            if "--model" in opt:
                assert opt["--model"] in made and tokens[opt["--model"]] in args[2]
