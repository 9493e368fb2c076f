"""Known-answer tests for condiff.metrics (distribution, image, perceptual, adherence, bootstrap,
features, CLIP score)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from condiff.metrics import (bootstrap_ci, clip_score, cmmd, depth_errors, edge_f1, extract_features,
                             filter_bank_distance, frechet_distance, gaussian_frechet_distance,
                             get_feature_extractor, kernel_inception_distance, keypoint_scores,
                             list_feature_extractors, mmd2_unbiased, normal_angular_error,
                             paired_bootstrap_ci, polynomial_kernel, psnr, region_scores,
                             register_feature_extractor, seam_error, ssim, text_retrieval_accuracy)
from condiff.metrics.perceptual import TorchmetricsLPIPS, remap_torchvision_features


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _texture(b: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """A smooth-plus-detail RGB test image in [0, 1]: sinusoids and random blobs."""
    g = _gen(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([0.5 + 0.3 * torch.sin(2 * math.pi * (3 * x + k * y)) for k in range(3)])
    blobs = F.interpolate(torch.rand(b, 3, size // 4, size // 4, generator=g), size=size, mode="bilinear")
    return (0.6 * base[None] + 0.4 * blobs).clamp(0, 1)


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(3 * sigma) + 1
    c = torch.arange(-r, r + 1, dtype=img.dtype)
    k = torch.exp(-c ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    x = F.pad(img, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)


# --------------------------------------------------------------------------- distribution


def test_frechet_identical_sets_is_zero():
    f = torch.randn(500, 8, generator=_gen(0))
    assert frechet_distance(f, f.clone()) == pytest.approx(0.0, abs=1e-9)


def test_gaussian_frechet_matches_closed_form_with_scipy_sqrtm():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    cov1, cov2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)  # non-commuting
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * scipy.linalg.sqrtm(cov1 @ cov2).real)
    assert gaussian_frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(ref, rel=1e-9)


def test_frechet_of_gaussian_samples_matches_closed_form():
    # Diagonal covariances: Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) = Σ (√a − √b)².
    g = _gen(2)
    var1, var2 = torch.tensor([1.0, 4.0, 0.25, 2.0]), torch.tensor([2.0, 1.0, 1.0, 0.5])
    mu1, mu2 = torch.tensor([0.0, 1.0, -1.0, 0.5]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    x = mu1 + var1.sqrt() * torch.randn(40000, 4, generator=g, dtype=torch.float64)
    y = mu2 + var2.sqrt() * torch.randn(40000, 4, generator=g, dtype=torch.float64)
    exact = float(((mu1 - mu2) ** 2).sum() + ((var1.sqrt() - var2.sqrt()) ** 2).sum())
    assert frechet_distance(x, y) == pytest.approx(exact, rel=0.03)


def test_mmd2_unbiased_matches_direct_formula_and_blocking():
    g = _gen(3)
    x, y = torch.randn(30, 4, generator=g, dtype=torch.float64), torch.randn(20, 4, generator=g, dtype=torch.float64) + 0.5
    k = polynomial_kernel()
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    ref = ((kxx.sum() - kxx.diag().sum()) / (30 * 29) + (kyy.sum() - kyy.diag().sum()) / (20 * 19)
           - 2 * kxy.mean())
    assert mmd2_unbiased(x, y, k, block=7) == pytest.approx(float(ref), rel=1e-10)


def test_kid_identical_near_zero_and_positive_for_shift():
    g = _gen(4)
    f = torch.randn(400, 16, generator=g)
    same = kernel_inception_distance(f, f.clone(), subset_size=200, n_subsets=10)
    iid = kernel_inception_distance(f, torch.randn(400, 16, generator=g), subset_size=200, n_subsets=10)
    other = kernel_inception_distance(f, torch.randn(400, 16, generator=g) + 0.5, subset_size=200, n_subsets=10)
    # Identical sets: shared samples enter the cross term, a known O(k(x,x)/N) negative offset.
    assert abs(same.mean) < 0.05 * other.mean
    assert abs(iid.mean) < 3 * iid.std and other.mean > 10 * iid.std
    assert kernel_inception_distance(f, f, subset_size=50, n_subsets=5, seed=7) == \
        kernel_inception_distance(f, f, subset_size=50, n_subsets=5, seed=7)
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(f, f, subset_size=1000)


def test_cmmd_identical_near_zero_and_grows_with_shift():
    g = _gen(5)
    x = torch.randn(300, 32, generator=g)
    y = torch.randn(300, 32, generator=g)
    # Identical sets: the biased estimate is exactly 0, the unbiased one lies in [−2·1000/N, 0].
    assert cmmd(x, x.clone(), unbiased=False) == pytest.approx(0.0, abs=1e-9)
    assert -2000 / 300 <= cmmd(x, x.clone()) <= 0.0
    values = [cmmd(x, y + s * torch.eye(32)[0]) for s in (0.0, 2.0, 5.0, 10.0)]
    assert values[1] > 1.0
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert cmmd(x, y + 5 * torch.eye(32)[0], unbiased=False) > 0


def test_distribution_bad_input_errors():
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        cmmd(torch.zeros(5), torch.zeros(5))


# --------------------------------------------------------------------------- image


def test_psnr_of_known_noise_variance():
    target = torch.full((2, 3, 128, 128), 0.5)
    sigma = 0.05
    pred = target + sigma * torch.randn(target.shape, generator=_gen(6))
    expected = 10 * math.log10(1 / sigma ** 2)
    assert torch.allclose(psnr(pred, target), torch.full((2,), expected), atol=0.1)
    from torchmetrics.functional.image import peak_signal_noise_ratio

    tm = peak_signal_noise_ratio(pred[:1], target[:1], data_range=1.0)
    assert float(psnr(pred[:1], target[:1])) == pytest.approx(float(tm), abs=1e-4)


def test_masked_psnr_ignores_the_other_region():
    target = _texture(1, 32)
    mask = torch.zeros(32, 32)
    mask[8:24, 8:24] = 1
    g = _gen(7)
    inside_noise = 0.02 * torch.randn(target.shape, generator=g)
    for outside_sigma in (0.0, 0.3):
        noise = torch.where(mask.bool(), inside_noise, outside_sigma * torch.randn(target.shape, generator=g))
        pred = target + noise
        inside = psnr(pred, target, mask=mask, region="inside")
        ref = 10 * torch.log10(1 / (inside_noise[:, :, 8:24, 8:24] ** 2).mean())
        assert float(inside) == pytest.approx(float(ref), abs=1e-4)
    assert float(psnr(pred, target, mask=mask, region="outside")) < 15 < float(inside)
    with pytest.raises(ValueError, match="needs a mask"):
        psnr(pred, target, region="inside")
    with pytest.raises(ValueError, match="empty"):
        psnr(pred, target, mask=torch.zeros(32, 32), region="inside")


def test_ssim_identical_is_one_and_matches_torchmetrics():
    img = _texture(2, 32)
    assert torch.allclose(ssim(img, img), torch.ones(2), atol=1e-6)
    noisy = (img + 0.1 * torch.randn(img.shape, generator=_gen(8))).clamp(0, 1)
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    ref = tm_ssim(noisy.double(), img.double(), data_range=1.0, reduction="none")
    assert torch.allclose(ssim(noisy, img), ref.float(), atol=1e-5)
    mask = torch.zeros(32, 32)
    mask[:, :16] = 1
    half_noisy = torch.where(mask.bool(), noisy, img)
    scores = region_scores(half_noisy, img, mask)
    assert (scores["ssim_outside"] > scores["ssim_whole"]).all()
    assert (scores["ssim_whole"] > scores["ssim_inside"]).all()


def test_seam_error_step_on_border_equals_step_height():
    img = torch.full((1, 3, 32, 32), 0.3)
    mask = torch.zeros(32, 32)
    mask[10:20, 12:22] = 1
    img[:, :, 10:20, 12:22] += 0.25
    assert float(seam_error(img, mask)) == pytest.approx(0.25, abs=1e-6)


def test_seam_error_zero_for_perfect_composite_and_positive_for_shifted_patch():
    y, x = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 48), indexing="ij")
    ramp = torch.stack([0.2 + 0.5 * x, 0.1 + 0.3 * y, 0.4 + 0.2 * x - 0.1 * y])[None]
    mask = torch.zeros(48, 48)
    mask[16:32, 16:32] = 1
    m = mask.bool()
    perfect = torch.where(m, ramp.clone(), ramp)
    assert float(seam_error(perfect, mask)) == pytest.approx(0.0, abs=1e-7)
    shifted = torch.where(m, torch.roll(ramp, shifts=(4, 4), dims=(-2, -1)), ramp)
    assert float(seam_error(shifted, mask)) > 0.02
    tex = _texture(1, 48)
    perfect_tex = torch.where(m, tex.clone(), tex)
    assert float(seam_error(perfect_tex, mask)) == pytest.approx(float(seam_error(tex, mask)), abs=1e-7)
    shifted_tex = torch.where(m, torch.roll(tex, shifts=(5, 5), dims=(-2, -1)), tex)
    assert float(seam_error(shifted_tex, mask)) > float(seam_error(tex, mask))


# --------------------------------------------------------------------------- perceptual


def test_filter_bank_distance_zero_for_identical_and_monotone_in_blur_and_noise():
    img = _texture(2, 64)
    assert torch.allclose(filter_bank_distance(img, img), torch.zeros(2), atol=1e-7)
    blurred = [filter_bank_distance(img, _blur(img, s)) for s in (0.5, 1.0, 2.0, 3.0)]
    assert all((a < b).all() for a, b in zip(blurred, blurred[1:])), blurred
    noisy = [filter_bank_distance(img, img + s * torch.randn(img.shape, generator=_gen(9)))
             for s in (0.01, 0.03, 0.1, 0.3)]
    assert all((a < b).all() for a, b in zip(noisy, noisy[1:])), noisy
    with pytest.raises(ValueError, match="too small"):
        filter_bank_distance(img[..., :8, :8], img[..., :8, :8])


def test_lpips_hook_needs_local_backbone_file(tmp_path):
    missing = tmp_path / "nothing.pth"
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        TorchmetricsLPIPS(missing, net="alex")
    with pytest.raises(ValueError, match="net must be"):
        TorchmetricsLPIPS(missing, net="resnet")


def test_remap_torchvision_features_keys():
    state = {"features.0.weight": torch.ones(1), "features.3.squeeze.bias": torch.zeros(2)}
    out = remap_torchvision_features(state, ["slice1.0.weight", "slices.1.3.squeeze.bias"])
    assert out["slice1.0.weight"] is state["features.0.weight"]
    assert out["slices.1.3.squeeze.bias"] is state["features.3.squeeze.bias"]
    with pytest.raises(ValueError, match="lacks"):
        remap_torchvision_features(state, ["slice2.5.weight"])


# --------------------------------------------------------------------------- adherence


def test_edge_f1_identical_disjoint_and_tolerance():
    a = torch.zeros(1, 32, 32)
    a[0, 10, 4:28] = 1
    assert float(edge_f1(a, a).f1) == 1.0
    far = torch.zeros(1, 32, 32)
    far[0, 25, 4:28] = 1
    assert float(edge_f1(a, far).f1) == 0.0
    shifted = torch.roll(a, 1, dims=1)
    assert float(edge_f1(shifted, a, tolerance=0).f1) == 0.0
    assert float(edge_f1(shifted, a, tolerance=1).f1) == 1.0
    assert float(edge_f1(torch.roll(a, 3, dims=1), a, tolerance=1).f1) == 0.0
    empty = torch.zeros(1, 32, 32)
    assert float(edge_f1(empty, empty).f1) == 1.0 and float(edge_f1(empty, a).f1) == 0.0
    half = a.clone()
    half[0, 10, 16:28] = 0  # half of the target found, all predictions correct
    s = edge_f1(half, a, tolerance=0)
    assert float(s.precision) == 1.0 and float(s.recall) == pytest.approx(0.5)
    assert float(s.f1) == pytest.approx(2 / 3)


def test_normal_angular_error_of_known_rotation():
    theta = 20.0
    c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    n = torch.randn(2, 3, 16, 16, generator=_gen(10))
    n = n / n.norm(dim=1, keepdim=True)
    t = torch.randn(2, 3, 16, 16, generator=_gen(11))
    t = t - (t * n).sum(1, keepdim=True) * n  # per-pixel tangent ⟂ n
    t = t / t.norm(dim=1, keepdim=True)
    rotated = c * n + s * t
    err = normal_angular_error(3.0 * rotated, n)  # magnitude must not matter
    assert torch.allclose(err.mean_deg, torch.full((2,), theta), atol=1e-4)
    assert torch.allclose(err.within_22_5, torch.ones(2)) and torch.allclose(err.within_11_25, torch.zeros(2))
    up = torch.zeros(1, 3, 4, 4)
    up[:, 2] = 1
    rot_x = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float32)
    assert float(normal_angular_error(torch.einsum("ij,bjhw->bihw", rot_x, up), up).median_deg) == \
        pytest.approx(theta, abs=1e-4)


def test_depth_errors_scale_shift_invariant():
    depth = 1.0 + torch.rand(2, 24, 24, generator=_gen(12))
    exact = depth_errors(3.0 * depth + 0.5, depth)
    assert torch.allclose(exact.abs_rel, torch.zeros(2), atol=1e-6)
    assert torch.allclose(exact.rmse, torch.zeros(2), atol=1e-6)
    noisy = depth + 0.1 * torch.randn(depth.shape, generator=_gen(13))
    e1, e2 = depth_errors(noisy, depth), depth_errors(7.0 * noisy - 2.0, depth)
    assert (e1.abs_rel > 0.01).all()
    assert torch.allclose(e1.abs_rel, e2.abs_rel, atol=1e-5) and torch.allclose(e1.rmse, e2.rmse, atol=1e-5)
    unaligned = depth_errors(3.0 * depth, depth, alignment="none")
    assert torch.allclose(unaligned.abs_rel, torch.full((2,), 2.0), atol=1e-5)


def test_keypoint_scores_with_missing_keypoints():
    target = torch.tensor([[[0.0, 0.0], [100.0, 0.0], [0.0, 50.0], [50.0, 50.0]]])  # bbox scale 100
    pred = target.clone()
    pred[0, 1] += torch.tensor([5.0, 0.0])  # 0.05 of scale: a hit at α = 0.1
    pred[0, 2] += torch.tensor([0.0, 20.0])  # 0.2: a miss
    pred[0, 3] = float("nan")  # not detected
    s = keypoint_scores(pred, target, alpha=0.1)
    assert float(s.pck) == pytest.approx(2 / 4)
    assert float(s.missing_rate) == pytest.approx(1 / 4)
    assert float(s.mean_distance) == pytest.approx((0 + 0.05 + 0.2) / 3)
    s2 = keypoint_scores(pred, target, target_visible=torch.tensor([[True, True, False, True]]), scale=100.0)
    assert float(s2.pck) == pytest.approx(2 / 3)
    none = keypoint_scores(pred, torch.full_like(target, float("nan")))
    assert math.isnan(float(none.pck))


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_true_mean_and_shrinks_with_n():
    rng = np.random.default_rng(14)
    big = rng.normal(1.0, 1.0, size=4000)
    ci = bootstrap_ci(big, seed=0)
    assert ci.lo < 1.0 < ci.hi and ci.lo < ci.mean < ci.hi
    widths = [bootstrap_ci(big[:n], seed=0) for n in (50, 400, 4000)]
    w = [c.hi - c.lo for c in widths]
    assert w[0] > w[1] > w[2]
    assert w[2] == pytest.approx(2 * 1.96 / math.sqrt(4000), rel=0.15)
    assert bootstrap_ci(big[:100], seed=3) == bootstrap_ci(big[:100], seed=3)
    diff = paired_bootstrap_ci(big[:500] + 0.5, big[:500])
    assert diff.lo == pytest.approx(0.5) and diff.hi == pytest.approx(0.5)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan"), 2.0])


# --------------------------------------------------------------------------- features


def test_feature_loaders_report_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth"):
        get_feature_extractor("inception-fid", weights_path=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="weights_path"):
        get_feature_extractor("inception-fid")
    with pytest.raises(FileNotFoundError, match="config.json"):
        get_feature_extractor("clip-vit-l14", model_dir=tmp_path / "no_clip")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        get_feature_extractor("clip-vision", model_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown feature extractor"):
        get_feature_extractor("no-such-net")


def test_clip_features_from_local_folder(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16)
    model = CLIPVisionModelWithProjection(cfg).eval()
    model.save_pretrained(tmp_path / "clip")
    ext = get_feature_extractor("clip-vision", model_dir=tmp_path / "clip")
    imgs = _texture(3, 40)
    feats = extract_features(ext, imgs, batch_size=2)
    assert feats.shape == (3, 16)
    assert torch.allclose(feats.norm(dim=1), torch.ones(3, dtype=torch.float64), atol=1e-5)
    crop = F.interpolate(imgs, size=(32, 32), mode="bicubic", antialias=True, align_corners=False)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        direct = F.normalize(model(pixel_values=(crop - mean) / std).image_embeds, dim=-1)
    assert torch.allclose(feats.float(), direct, atol=1e-5)
    with pytest.raises(ValueError, match="ViT-L/14"):
        get_feature_extractor("clip-vit-l14", model_dir=tmp_path / "clip")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ext(imgs * 2 - 1)


def test_feature_registry_is_open():
    class MeanColour:
        name = "mean-colour"

        def __call__(self, images):
            return images.mean((2, 3))

    register_feature_extractor("test-mean-colour", MeanColour, overwrite=True)
    assert "test-mean-colour" in list_feature_extractors()
    with pytest.raises(ValueError, match="already registered"):
        register_feature_extractor("test-mean-colour", MeanColour)
    ext = get_feature_extractor("test-mean-colour")
    assert extract_features(ext, torch.full((5, 3, 8, 8), 0.25), batch_size=2).shape == (5, 3)


# --------------------------------------------------------------------------- CLIP score


def test_clip_score_and_retrieval():
    e = torch.eye(4)
    assert torch.allclose(clip_score(e, 2 * e), torch.full((4,), 100.0))
    assert float(clip_score(e[:1], e[1:2])) == pytest.approx(0.0)
    assert float(clip_score(e[:1], -e[:1])) == 0.0  # negative cosine clamped
    sixty = torch.tensor([[math.cos(math.pi / 3), math.sin(math.pi / 3), 0, 0]])
    assert float(clip_score(e[:1], sixty)) == pytest.approx(50.0, abs=1e-4)
    texts = torch.eye(4)
    imgs = torch.tensor([[1.0, 0.1, 0, 0], [0.9, 1.0, 0, 0], [0, 0, 0.2, 1.0]])
    target = torch.tensor([0, 0, 2])
    assert text_retrieval_accuracy(imgs, texts, target).tolist() == [1.0, 0.0, 0.0]
    assert text_retrieval_accuracy(imgs, texts, target, k=2).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="indices"):
        text_retrieval_accuracy(imgs, texts, torch.tensor([0, 0, 9]))


# ----------------------------------------------------------------------------------------------- coherence


def _picture_and_mask():
    g = torch.Generator().manual_seed(0)
    img = (0.1 + 0.8 * torch.rand(2, 3, 64, 64, generator=g))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    return img, mask


def test_coherence_of_a_perfect_fill_is_zero_distance_and_no_seam():
    from condiff.metrics.coherence import coherence_scores

    img, mask = _picture_and_mask()
    s = coherence_scores(img, img, mask)
    assert torch.all(s["lpips_like_fill"] == 0) and torch.all(s["seam_added"] == 0)
    assert torch.all(torch.isinf(s["psnr_fill"])) and torch.allclose(s["ssim_fill"], torch.ones(2))


def test_coherence_of_a_shifted_fill_has_known_psnr_and_seam():
    """A fill brighter by 0.1 everywhere inside: PSNR 20 dB inside; on a flat picture the border becomes a
    step of height 0.1, which is the seam added (seam_error's definition)."""
    from condiff.metrics.coherence import coherence_scores

    img, mask = _picture_and_mask()
    shifted = img + 0.1 * mask
    s = coherence_scores(shifted, img, mask)
    assert torch.allclose(s["psnr_fill"], torch.full((2,), 20.0), atol=1e-3)
    assert torch.all(s["lpips_like_fill"] > 0)
    flat = torch.full((1, 3, 64, 64), 0.5)
    seam = coherence_scores(flat + 0.1 * mask, flat, mask)["seam_added"]
    assert float(seam) == pytest.approx(0.1, abs=1e-5)


def test_fill_distance_looks_at_the_masked_region_only():
    from condiff.metrics.coherence import fill_distance, region_crops

    img, mask = _picture_and_mask()
    other = img.clone()
    other[..., :8, :8] = 0  # changed far outside the mask's box
    assert torch.all(fill_distance(other, img, mask) == 0)
    assert region_crops(img, mask, size=32).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="empty"):
        fill_distance(img, img, torch.zeros(1, 1, 64, 64))


def test_composite_distance_is_zero_for_the_same_features_and_grows_with_a_shift():
    from condiff.metrics.coherence import composite_distance

    g = torch.Generator().manual_seed(1)
    real = torch.randn(200, 8, generator=g)
    same = composite_distance(real, real)
    shifted = composite_distance(real + 1.0, real)
    # KID of a set with itself is ~0 (slightly negative: the two subsets share samples); a unit shift is far above
    assert same["fd"] == pytest.approx(0, abs=1e-6) and abs(same["kid"]) < shifted["kid"] / 50
    assert shifted["fd"] == pytest.approx(8.0, rel=1e-6) and same["n"] == same["n_real"] == 200  # FD: ||Δμ||² = 8·1²
