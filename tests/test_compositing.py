"""Mask handling, "only masked area" crops, exact compositing and seam-aware blending."""

import pytest
import torch
import torch.nn.functional as F

from condiff.compositing import (
    Box,
    blend,
    border_bands,
    check_mask,
    composite,
    crop_box,
    feather_mask,
    gaussian_blur,
    laplacian_blend,
    mask_box,
    match_colors,
    paste_box,
    poisson_blend,
    resize_mask,
    seam_error,
)


def _disc(h=64, w=64, cy=30, cx=34, r=14):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()[None, None]


def _scene(h=64, w=64, seed=0):
    """A smooth colour gradient with mild texture (values roughly in [0, 1])."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([0.3 + 0.4 * xx, 0.5 - 0.2 * yy, 0.2 + 0.3 * xx * yy])[None]
    return base + 0.02 * torch.randn(1, 3, h, w, generator=g)


def _generated(original, seed=1):
    """What an inpainting model might return: new texture and a colour drift (0.25, −0.15, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    offset = torch.tensor([0.25, -0.15, 0.10]).view(1, 3, 1, 1)
    return original + offset + 0.03 * torch.randn(original.shape, generator=g)


def test_composite_is_pixel_exact_outside_the_mask():
    orig, mask = _scene(), feather_mask(_disc(), 3.0)
    gen = _generated(orig)
    gen[..., 0, 0] = float("nan")  # garbage outside the mask must not leak
    out = composite(orig, gen, mask)
    outside = (mask == 0).expand_as(orig)
    assert torch.equal(out[outside], orig[outside])
    inside = (mask == 1).expand_as(orig)
    assert torch.equal(out[inside], gen[inside])
    assert inside.any() and ((mask > 0) & (mask < 1)).any()


def test_feather_inward_keeps_outside_and_center_spreads():
    mask = _disc()
    inward = feather_mask(mask, 2.0)
    assert torch.equal(inward[mask == 0], torch.zeros_like(inward[mask == 0]))
    assert inward[0, 0, 30, 34] == pytest.approx(1.0, abs=1e-6)  # deep inside
    assert ((inward > 0) & (inward < 1)).sum() > 50  # a soft ramp along the border
    center = feather_mask(mask, 2.0, mode="center")
    assert (center[mask == 0] > 0.01).any()
    with pytest.raises(ValueError, match="feather mode"):
        feather_mask(mask, 2.0, mode="sideways")


def test_gaussian_blur_keeps_constants_and_mass():
    x = torch.full((1, 2, 9, 11), 0.7)
    torch.testing.assert_close(gaussian_blur(x, 1.5), x)
    spike = torch.zeros(1, 1, 21, 21)
    spike[..., 10, 10] = 1
    blurred = gaussian_blur(spike, 2.0)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5) and blurred.max() < 0.05


def test_resize_mask_max_keeps_small_regions():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 13, 50] = 1
    small = resize_mask(mask, (8, 8))
    assert small.sum() == 1 and small[0, 0, 1, 6] == 1
    assert resize_mask(mask, (8, 8), mode="area").max() == pytest.approx(1 / 64)


def test_mask_box_padding_multiple_and_aspect():
    mask = torch.zeros(1, 1, 100, 120)
    mask[..., 40:50, 60:75] = 1
    box = mask_box(mask, padding=4)
    assert box.top <= 36 and box.bottom >= 54 and box.left <= 56 and box.right >= 79
    assert box.height % 8 == 0 and box.width % 8 == 0
    wide = mask_box(mask, padding=4, aspect=2.0)
    assert wide.width / wide.height == pytest.approx(2.0, rel=0.1)
    corner = torch.zeros(1, 1, 100, 120)
    corner[..., 0:3, 115:120] = 1
    cbox = mask_box(corner, padding=10)
    assert cbox.top == 0 and cbox.right == 120 and cbox.height % 8 == 0 and cbox.width % 8 == 0


def test_only_masked_area_round_trip():
    orig, mask = _scene(), _disc(r=8)
    box = mask_box(mask, padding=8)
    assert torch.equal(paste_box(orig, crop_box(orig, box), box), orig)
    crop = crop_box(orig, box)
    work = F.interpolate(crop, scale_factor=2, mode="bilinear")  # "inpaint at full resolution"
    work = work + 0.5
    full = paste_box(orig, work, box)  # resized back into the box
    out = composite(orig, full, mask)
    outside = (mask == 0).expand_as(orig)
    assert torch.equal(out[outside], orig[outside])
    assert (out - orig)[(mask == 1).expand_as(orig)].mean() == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="inside"):
        crop_box(orig, Box(0, 0, 65, 10))


def test_seam_error_definition():
    img = torch.zeros(1, 1, 4, 4)
    img[..., :, :2] = 1.0  # left half bright
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :, :2] = 1  # ... and masked
    assert seam_error(img, mask) == pytest.approx(1.0)  # 4 border pairs, each jumping by 1
    assert seam_error(torch.ones(1, 1, 4, 4), mask) == 0.0
    with pytest.raises(ValueError, match="no border"):
        seam_error(img, torch.ones(1, 1, 4, 4))


def test_seam_aware_blending_lowers_seam_error():
    orig, mask = _scene(), _disc()
    gen = _generated(orig)
    alpha = blend(orig, gen, mask, method="alpha")
    errors = {"alpha": seam_error(alpha, mask), "reference": seam_error(orig, mask)}
    for method in ("laplacian", "poisson"):
        out = blend(orig, gen, mask, method=method)
        errors[method] = seam_error(out, mask)
        outside = (mask == 0).expand_as(orig)
        assert torch.equal(out[outside], orig[outside]), method
        errors[method + "+color"] = seam_error(blend(orig, gen, mask, method=method, color_match=True), mask)
    assert errors["alpha"] > 0.15  # ≈ mean |offset| = 0.17
    assert errors["laplacian"] < 0.5 * errors["alpha"], errors
    assert errors["poisson"] < 0.5 * errors["alpha"], errors
    assert errors["poisson+color"] < 2 * errors["reference"] + 0.02, errors


def test_poisson_reproduces_original_for_a_pure_colour_shift():
    orig, mask = _scene(32, 32), _disc(32, 32, 16, 15, 7)
    shifted = orig + torch.tensor([0.3, -0.2, 0.05]).view(1, 3, 1, 1)
    torch.testing.assert_close(poisson_blend(orig, shifted, mask), orig, rtol=0, atol=1e-5)


def test_match_colors_undoes_an_affine_drift():
    orig, mask = _scene(), _disc()
    drifted = orig * 0.6 + 0.3
    torch.testing.assert_close(match_colors(orig, drifted, mask), orig, rtol=0, atol=1e-5)


def test_border_bands():
    inner, outer = border_bands(_disc(), 2)
    assert (inner * outer).sum() == 0 and inner.sum() > 0 and outer.sum() > 0
    assert torch.equal(inner * _disc(), inner) and (outer * _disc()).sum() == 0


def test_bad_masks():
    img = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match="differs from image size"):
        composite(img, img, torch.ones(1, 1, 8, 16))
    with pytest.raises(ValueError, match="empty"):
        blend(img, img, torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_mask(torch.full((1, 1, 16, 16), 1.5), img)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        check_mask(torch.ones(1, 3, 16, 16), img)
    with pytest.raises(ValueError, match="blend method"):
        blend(img, img, torch.ones(1, 1, 16, 16), method="magic")
    with pytest.raises(ValueError, match="differ in shape"):
        composite(img, torch.zeros(1, 3, 16, 8), torch.ones(1, 1, 16, 16))


def test_laplacian_and_poisson_on_a_batch_with_per_sample_masks():
    orig = torch.cat([_scene(seed=0), _scene(seed=5)])
    mask = torch.cat([_disc(), _disc(cy=20, cx=20, r=9)])
    gen = _generated(orig)
    for fn in (laplacian_blend, poisson_blend):
        out = fn(orig, gen, mask)
        outside = (mask == 0).expand_as(orig)
        assert torch.equal(out[outside], orig[outside])
        assert seam_error(out, mask) < 0.5 * seam_error(composite(orig, gen, mask), mask)
