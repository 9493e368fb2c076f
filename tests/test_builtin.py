"""The shipped built-in weights: checksums, clear errors, determinism, guidance direction."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from condiff.models import registry
from condiff.models.weights import WeightsError, load_weights, read_config, sha256_file
from condiff.pipelines.text2img import generate

SHIPPED = ["vae", "ldm", "ldm-inpaint", "evalenc", "unclip-embedder", "unclip-prior", "unclip-decoder", "classifier"] + [
    f"controlnet-{k}" for k in ("canny", "lineart", "softedge", "depth", "normal", "pose")
]


@pytest.fixture(scope="module")
def model():
    return registry.load_model("builtin")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checksums_match_config_and_model_card(name):
    folder = registry.component_dir(name)
    files = json.loads((folder / "config.json").read_text())["files"]
    card = (folder / "MODEL_CARD.md").read_text()
    for fname, digest in files.items():
        assert sha256_file(folder / fname) == digest
        assert digest in card
        assert (folder / fname).stat().st_size <= 16 * 1024 * 1024


def test_every_shipped_component_has_a_role():
    present = {name for name, ok in registry.builtin_components().items() if ok}
    assert set(SHIPPED) <= present
    assert all(registry.component_role(name) for name in present)


def test_shipped_unclip_uses_its_frozen_embedder_not_evalenc():
    """unCLIP's configs name `unclip-embedder` (a frozen snapshot of the evalenc it was trained on), so a
    retrained evalenc cannot silently change unCLIP's embedding space; its card records the checksum."""
    from condiff.models.unclip import IMAGE_ENCODER_KEY, UNCLIP_EMBEDDER, load_unclip

    for name in ("unclip-prior", "unclip-decoder"):
        assert read_config(registry.component_dir(name))[IMAGE_ENCODER_KEY] == UNCLIP_EMBEDDER
    folder = registry.component_dir(UNCLIP_EMBEDDER)
    card = (folder / "MODEL_CARD.md").read_text()
    assert "frozen snapshot of condiff-evalenc" in card and "2026-11-26" in card
    model = load_unclip(with_upsampler=False)
    assert model.image_encoder_component == UNCLIP_EMBEDDER
    state = {k: v.float() for k, v in load_weights(folder).items()}
    assert all(torch.equal(v, state[k]) for k, v in model.image_encoder.state_dict().items())


def test_weights_budget():
    total = sum(p.stat().st_size for p in registry.WEIGHTS_DIR.rglob("*.safetensors"))
    assert total <= 150e6


def test_corrupted_weights_give_clear_error(tmp_path):
    dst = tmp_path / "vae"
    shutil.copytree(registry.component_dir("vae"), dst)
    f = next(dst.glob("*.safetensors"))
    data = bytearray(f.read_bytes())
    data[-100] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_weights(dst)


def test_load_frozen_fills_freezes_and_names_a_misfit(tmp_path):
    from condiff.models.weights import load_frozen, save_weights

    src = torch.nn.Linear(3, 2)
    save_weights(src.state_dict(), tmp_path / "lin", {"kind": "test"}, dtype=None)
    net = load_frozen(torch.nn.Linear(3, 2), tmp_path / "lin", dtype=torch.float64)
    assert torch.equal(net.weight, src.weight.detach().double())
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    with pytest.raises(WeightsError, match=r"weights in .*lin do not fit the toy net of its config.json"):
        load_frozen(torch.nn.Linear(4, 2), tmp_path / "lin", what="toy net")


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model"):
        registry.load_model("no-such-model")
    with pytest.raises(ValueError, match="no built-in component"):
        registry.load_component("controlnet-nothing")


def test_four_step_generation_is_deterministic(model):
    a = generate(model, "a cat face, twemoji style", steps=4, seed=3, show_progress=False).images
    b = generate(model, "a cat face, twemoji style", steps=4, seed=3, show_progress=False).images
    assert a.shape == (1, 3, 128, 128)
    assert torch.equal(a, b)
    assert a.std() > 0.05  # a picture, not a flat or black image


def test_guidance_raises_prompt_adherence(model):
    enc, _ = registry.load_component("evalenc")
    prompts = ["a red heart, twemoji style", "a yellow crescent moon, noto emoji", "a green turtle, openmoji",
               "a cat face, flat style", "a red apple, fluent flat style", "a blue car, twemoji style"]
    txt = model.text_encoder.pooled(prompts)

    def score(gamma):
        imgs = generate(model, prompts, guidance=gamma, steps=8, seed=0, show_progress=False).images
        return (enc(imgs) * txt).sum(1).mean().item()

    assert score(5.0) > score(0.0) + 0.05
