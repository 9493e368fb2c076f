"""The image pipelines on a tiny random-weight latent model (plumbing, seeds, exactness)."""

import pytest
import torch

from condiff.pipelines.inpaint import inpaint
from condiff.pipelines.text2img import generate, sdedit
from condiff.testing.tiny import tiny_ldm


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return tiny_ldm()


def test_generate_shape_and_seed_independent_of_batch(model):
    a = generate(model, "a cat face", steps=3, seed=10, batch_size=3, show_progress=False)
    assert a.images.shape == (3, 3, 32, 32)
    assert a.images.min() >= 0 and a.images.max() <= 1
    b = generate(model, "a cat face", steps=3, seed=11, batch_size=1, show_progress=False)
    assert torch.allclose(a.images[1], b.images[0], atol=1e-5)
    assert a.params["seeds"] == [10, 11, 12] and a.params_for(2)["seed"] == 12


def test_params_record_one_prompt_or_the_list_and_callbacks_see_each_step(model):
    seen = []
    same = generate(model, ["a cat", "a cat"], steps=3, show_progress=False, callback=lambda i: seen.append(i["i"]))
    assert same.params["prompt"] == "a cat" and seen == [0, 1, 2]
    mixed = generate(model, ["a cat", "a dog"], steps=3, show_progress=False)
    assert mixed.params["prompt"] == ["a cat", "a dog"] and mixed.params_for(1)["prompt"] == "a dog"


def test_generate_deterministic_and_guidance_matters(model):
    kw = dict(steps=3, seed=4, show_progress=False, sampler="euler")
    x1 = generate(model, "a red dog", guidance=1.0, **kw).images
    x2 = generate(model, "a red dog", guidance=1.0, **kw).images
    x3 = generate(model, "a red dog", guidance=7.0, **kw).images
    assert torch.equal(x1, x2)
    assert (x1 - x3).abs().max() > 1e-4


def test_sdedit_zero_strength_returns_input_exactly(model):
    img = torch.rand(2, 3, 32, 32)
    out = sdedit(model, img, "a cat", strength=0.0, steps=4, show_progress=False)
    assert torch.equal(out.images, img)
    full = sdedit(model, img, "a cat", strength=1.0, steps=4, seed=3, show_progress=False, sampler="euler")
    other = sdedit(model, torch.rand(2, 3, 32, 32), "a cat", strength=1.0, steps=4, seed=3, show_progress=False,
                   sampler="euler")
    assert torch.allclose(full.images, other.images, atol=1e-5)  # t0 = 1 ignores the input
    with pytest.raises(ValueError, match="strength"):
        sdedit(model, img, "a cat", strength=1.5, show_progress=False)


@pytest.mark.parametrize("method", ["model", "blend", "repaint"])
def test_inpaint_composite_exact_outside_mask(model, method):
    img = torch.rand(1, 3, 32, 32)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 10:24] = 1
    res = inpaint(model, img, mask, "a hat", method=method, steps=3, seed=1, show_progress=False,
                  jump_length=1, resamples=2, sampler="euler")
    out = res.images
    assert out.shape == img.shape
    assert torch.equal(out[..., mask[0, 0] == 0], img[..., mask[0, 0] == 0])
    assert (out[..., mask[0, 0] > 0] - img[..., mask[0, 0] > 0]).abs().max() > 0
    assert res.params["method"] == method


def test_inpaint_crop_to_mask_and_bad_input(model):
    img = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 40:50, 40:52] = 1
    res = inpaint(model, img, mask, "a star", method="blend", steps=2, crop_to_mask=True, show_progress=False,
                  sampler="euler")
    assert torch.equal(res.images[..., mask[0, 0] == 0], img[..., mask[0, 0] == 0])
    with pytest.raises(ValueError):
        inpaint(model, img, torch.zeros(1, 1, 32, 32), "x", show_progress=False)
    with pytest.raises(ValueError, match="method"):
        inpaint(model, img, mask, "x", method="magic", show_progress=False)
