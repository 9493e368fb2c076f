"""The evalenc objective (augmentation, full-vocabulary concept term), the inpainting mask mixture and warm starts."""

import pytest
import torch

from condiff.data.builder import build_world
from condiff.data.sources import load_small_sets
from condiff.nn.image_encoder import ImageEncoder, ImageEncoderConfig
from training.evalenc import EvalEncoderObjective, augment
from training.job import JobContext, _warm_start
from training.job_cli import main as job_main
from training.export import export_component
from training.latent import MASK_MIXTURE, SUBJECT_DILATION, random_masks
from condiff.evaluation.world import load_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    build_world(folder, load_small_sets(), small=True, workers=1, limit=24)
    return load_world(folder)


def test_augment_without_zoom_or_shift_is_the_identity_or_the_mirror_image():
    x = torch.rand(6, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    same = augment(x, torch.zeros(6, dtype=torch.bool), g, zoom=(1.0, 1.0), shift_px=0)
    assert torch.allclose(same, x, atol=1e-5)
    flips = [augment(x[:1], torch.ones(1, dtype=torch.bool), torch.Generator().manual_seed(s), zoom=(1.0, 1.0),
                     shift_px=0) for s in range(16)]
    assert any(torch.allclose(f, x[:1].flip(-1), atol=1e-5) for f in flips)  # flippable pictures get mirrored …
    assert any(torch.allclose(f, x[:1], atol=1e-5) for f in flips)  # … about half of the time


def test_augment_zoom_enlarges_the_picture_about_its_centre():
    x = torch.zeros(1, 1, 64, 64)
    x[..., 24:40, 24:40] = 1  # a centred square, 16 px
    g = torch.Generator().manual_seed(0)
    big = augment(x, torch.zeros(1, dtype=torch.bool), g, zoom=(1.5, 1.5), shift_px=0)
    small = augment(x, torch.zeros(1, dtype=torch.bool), g, zoom=(0.5, 0.5), shift_px=0)
    assert float(big.sum()) == pytest.approx(16 * 16 * 1.5 ** 2, rel=0.1)
    assert float(small.sum()) == pytest.approx(16 * 16 * 0.5 ** 2, rel=0.15)
    assert big[0, 0, 32, 32] == 1 and small[0, 0, 32, 32] == 1


def _batch(n=8, concepts=5, d=16):
    g = torch.Generator().manual_seed(1)
    concept = torch.arange(n) % concepts
    ct = torch.nn.functional.normalize(torch.randn(concepts, d, generator=g), dim=-1)
    text = ct[concept][:, None].repeat(1, 2, 1)
    return {"images": torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), "text": text,
            "concept": concept, "flippable": torch.ones(n, dtype=torch.bool)}, ct


def test_concept_term_ranks_the_true_concept_against_all_concept_prompts():
    batch, ct = _batch()
    enc = ImageEncoder(ImageEncoderConfig(image_size=32, block_out_channels=(16, 16), embed_dim=16))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731 - same draws for every call
    plain = EvalEncoderObjective()(enc, batch, g())
    both = EvalEncoderObjective(concept_text=ct)(enc, batch, g())
    assert plain.shape == both.shape == (8,)
    assert torch.all(both > plain)  # the cross-entropy over concepts is positive and added per sample

    class Oracle(torch.nn.Module):  # embeds every picture as its true concept's prompt (or a wrong one)
        def __init__(self, shift):
            super().__init__()
            self.logit_scale = torch.nn.Parameter(torch.tensor(100.0).log())
            self.shift = shift

        def forward(self, x):
            return ct[(batch["concept"] + self.shift) % len(ct)]

    right = EvalEncoderObjective(concept_text=ct, concept_weight=1.0)(Oracle(0), batch, g())
    wrong = EvalEncoderObjective(concept_text=ct, concept_weight=1.0)(Oracle(1), batch, g())
    assert float(right.detach().mean()) < 0.1 < float(wrong.detach().mean())
    # the term trains the image tower: its gradient reaches the first convolution
    EvalEncoderObjective(concept_text=ct, concept_weight=1.0)(enc, batch, g()).mean().backward()
    assert enc.stem.weight.grad is not None and float(enc.stem.weight.grad.abs().sum()) > 0


def test_mask_mixture_draws_each_kind_and_subject_masks_cover_the_dilated_subject(world):
    regions = world.regions[:16]
    fg = regions > 0
    g = torch.Generator().manual_seed(0)
    sub = random_masks(regions, g, {"subject": 1.0})[:, 0]
    has_fg = fg.flatten(1).any(1)
    assert torch.all(sub[fg] == 1)  # the whole subject is repainted …
    assert torch.all(sub[has_fg].sum((1, 2)) > fg[has_fg].sum((1, 2)))  # … with a margin of 2–8 px
    margin = torch.nn.functional.max_pool2d(fg[:, None].float(), 2 * max(SUBJECT_DILATION) + 1, stride=1,
                                            padding=max(SUBJECT_DILATION))[:, 0]
    assert torch.all(sub[has_fg] <= margin[has_fg])  # never beyond the widest dilation
    assert torch.all(random_masks(regions, g, {"full": 1.0}) == 1)
    big = random_masks(world.regions[:4].repeat(100, 1, 1), torch.Generator().manual_seed(1))
    share_full = float((big.flatten(1).amin(1) == 1).float().mean())
    assert 0.15 < share_full < 0.4  # about MASK_MIXTURE["full"] (plus empty picks that fall back to it)
    assert set(MASK_MIXTURE) == {"full", "region", "subject", "box", "strokes"}
    with pytest.raises(ValueError, match="mask mixture"):
        random_masks(regions, g, {"ellipse": 1.0})
    with pytest.raises(ValueError, match="mask mixture"):
        random_masks(regions, g, {"full": 0.0})


def test_warm_start_skips_a_differently_shaped_network_and_required_ones_fail(world, tmp_path):
    small = ImageEncoder(ImageEncoderConfig(block_out_channels=(16, 32)))
    export_component(small, tmp_path / "init" / "evalenc", kind="image-encoder",
                     network_config=small.config.to_dict())
    ctx = JobContext(world, tmp_path / "out", torch.device("cpu"), init=tmp_path / "init")
    same = ImageEncoder(ImageEncoderConfig(block_out_channels=(16, 32)))
    _warm_start(ctx, "evalenc", same)
    assert torch.equal(same.stem.weight, small.stem.weight.half().float())
    wide = ImageEncoder(ImageEncoderConfig(block_out_channels=(32, 64)))
    before = wide.stem.weight.clone()
    _warm_start(ctx, "evalenc", wide)  # another architecture: left as initialised
    assert torch.equal(wide.stem.weight, before)
    with pytest.raises(ValueError, match="does not fit"):
        _warm_start(ctx, "evalenc", wide, required=True)


@pytest.mark.parametrize("value, message", [("32,64,x", "comma-separated integers"), ("32,40", "multiple of 16")])
def test_bad_evalenc_channels_are_refused(value, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        job_main(["--world", str(tmp_path), "--out", str(tmp_path / "o"), "--evalenc-channels", value])
