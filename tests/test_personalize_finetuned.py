"""DreamBooth files as models: the 4-bit weight difference and loading through the registry (issue 24 item 5)."""

import copy

import pytest
import torch

from condiff.errors import ModelError
from condiff.models import registry
from condiff.models.sd_loader import finetuned_metadata, load_finetuned_model
from condiff.models.weight_delta import decode_delta, encode_delta
from condiff.personalize import save_finetuned_weights
from test_personalize import tiny_ldm

pytestmark = pytest.mark.usefixtures("single_thread")


def _perturbed(model, scale=1e-3, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def test_weight_difference_round_trip_is_within_half_a_step():
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(6, 3, 3, 3, generator=g), "b": torch.randn(6, generator=g), "odd": torch.randn(3, 5, generator=g)}
    fine = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    stored = encode_delta(fine, base, compress=False)
    assert stored["w.q4"].dtype == torch.uint8 and stored["w.q4"].numel() == (6 * 27 + 1) // 2
    out = decode_delta(stored, base)
    packed = encode_delta(fine, base)  # LZMA is lossless
    assert "w.q4xz" in packed and "w.q4" not in packed
    assert all(torch.equal(out[k], v) for k, v in decode_delta(packed, base).items())
    for k in ("w", "odd"):
        step = (fine[k] - base[k]).reshape(base[k].shape[0], -1).abs().amax(1) / 7
        err = (out[k] - fine[k]).reshape(base[k].shape[0], -1).abs()
        assert (err <= step[:, None] * 0.51 + 1e-6).all()  # half a step, plus the fp16 scale's rounding
    assert torch.allclose(out["b"], fine["b"], atol=1e-3)  # fp16 vector
    assert torch.equal(decode_delta(encode_delta(base, base), base)["w"], base["w"])  # no change -> exact
    with pytest.raises(KeyError, match="another model"):
        decode_delta(stored, {**base, "extra": torch.zeros(2, 2)})


@pytest.mark.parametrize("delta", [False, True])
def test_a_dreambooth_file_loads_wherever_a_model_is_accepted(tmp_path, monkeypatch, delta):
    base = tiny_ldm()
    base.name = "builtin"
    fine = _perturbed(copy.deepcopy(base))
    path = save_finetuned_weights(fine, tmp_path / "db.safetensors", base_unet=base.unet if delta else None)
    meta = finetuned_metadata(path)
    assert meta["condiff.base"] == "builtin" and (meta.get("condiff.delta") is not None) == delta
    monkeypatch.setattr(registry, "builtin_components", lambda: {"ldm": True, "vae": True})
    monkeypatch.setattr(registry, "_load_builtin", lambda device, dtype: copy.deepcopy(base))
    loaded = registry.load_model(str(path))  # what every command's --model goes through
    assert loaded.name == "builtin+db" and loaded.info["finetune"] == str(path)
    want, got, orig = fine.unet.state_dict(), loaded.unet.state_dict(), base.unet.state_dict()
    for k in want:
        tol = 0 if not delta else float((want[k] - orig[k]).abs().max()) / 14 + 1e-3
        assert torch.allclose(got[k], want[k], atol=tol, rtol=0), k
    assert any(not torch.equal(got[k], orig[k]) for k in orig)  # the fine-tune, not the base


def test_a_dreambooth_file_of_a_missing_base_says_so(tmp_path):
    model = tiny_ldm()
    model.info["path"] = str(tmp_path / "gone.safetensors")
    path = save_finetuned_weights(model, tmp_path / "db.safetensors")
    assert finetuned_metadata(path)["condiff.base"].endswith("gone.safetensors")
    with pytest.raises(ModelError, match="fine-tunes .*gone.safetensors.*cannot be loaded here"):
        load_finetuned_model(path)
    assert finetuned_metadata(tmp_path / "nothing.safetensors") is None
