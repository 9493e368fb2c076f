"""SDEdit (thesis 3.1.2) and zero-shot inpainting (blending, RePaint) on exact Gaussian denoisers."""

import pytest
import torch

from condiff.denoisers import Cond, sigma_batch
from condiff.editing import BlendInpaint, repaint_sample, repaint_schedule, sdedit, sdedit_start, sdedit_steps
from condiff.guidance import ClassifierFreeGuidance
from condiff.noise import NoiseSource
from condiff.samplers import list_samplers, make_sigmas, sample
from condiff.testing.gmm import GaussianMixture, GMMDenoiser, sliced_wasserstein, two_moons_mixture


class GaussianDenoiser(torch.nn.Module):
    """Exact denoiser of one Gaussian, μ + Σ(Σ + σ²I)⁻¹(x − μ): GMMDenoiser with K = 1, but one
    batched solve per call (fast enough for RePaint's many calls). Checked against GMMDenoiser below."""

    sigma_min, sigma_max = 0.002, 80.0

    def __init__(self, mean, cov):
        super().__init__()
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.cov = torch.as_tensor(cov, dtype=torch.float64)

    def mixture(self) -> GaussianMixture:
        return GaussianMixture(torch.ones(1), self.mean[None], self.cov[None])

    def forward(self, x, sigma, cond=None):
        sigma = sigma_batch(sigma, x)
        eye = torch.eye(len(self.mean), dtype=torch.float64)
        a = self.cov[None] + sigma.double()[:, None, None] ** 2 * eye
        sol = torch.linalg.solve(a, (x.double() - self.mean)[..., None])
        return (self.mean + (self.cov @ sol)[..., 0]).to(x.dtype)

    def conditional(self, known_idx, unknown_idx, values):
        """Closed-form N(μ_u + Σ_uk Σ_kk⁻¹ (a − μ_k), Σ_uu − Σ_uk Σ_kk⁻¹ Σ_ku)."""
        s, m = self.cov, self.mean
        s_kk, s_uk = s[known_idx][:, known_idx], s[unknown_idx][:, known_idx]
        mean = m[unknown_idx] + s_uk @ torch.linalg.solve(s_kk, values - m[known_idx])
        cov = s[unknown_idx][:, unknown_idx] - s_uk @ torch.linalg.solve(s_kk, s_uk.T)
        return mean, cov


CORRELATED = GaussianDenoiser([0.0, 0.0], [[1.0, 0.8], [0.8, 1.0]])
# 4-D: known block {0, 2} and unknown block {1, 3}, each internally correlated, independent of each other
BLOCKS = GaussianDenoiser(
    [0.5, -1.0, 1.0, 2.0],
    [[1.0, 0.0, 0.6, 0.0], [0.0, 0.5, 0.0, -0.3], [0.6, 0.0, 1.5, 0.0], [0.0, -0.3, 0.0, 0.8]],
)


def test_fast_gaussian_denoiser_matches_gmm_harness():
    x = torch.randn(20, 4, dtype=torch.float64)
    ref = GMMDenoiser(BLOCKS.mixture())
    for s in (0.01, 1.0, 30.0):
        torch.testing.assert_close(BLOCKS(x, s), ref(x, s), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- SDEdit


def test_sdedit_steps_and_start():
    sig = make_sigmas(CORRELATED, 10, "karras")
    x0 = torch.randn(4, 2, dtype=torch.float64)
    assert [sdedit_steps(10, t) for t in (0, 0.05, 0.2, 0.3, 0.6, 0.7, 0.99, 1.0)] == [0, 0, 2, 3, 6, 7, 9, 10]
    tail, start = sdedit_start(x0, sig, 0.3, NoiseSource(7, 4))
    torch.testing.assert_close(tail, sig[7:])
    eps = NoiseSource(7, 4).randn_like(x0)
    torch.testing.assert_close(start, x0 + float(sig[7]) * eps, rtol=0, atol=0)
    tail, start = sdedit_start(x0, sig, 0.0, NoiseSource(7, 4))
    assert tail.tolist() == [0.0] and torch.equal(start, x0)


def test_sdedit_t0_zero_returns_input_bit_exactly_without_calls():
    den = GMMDenoiser(two_moons_mixture())
    x0 = torch.rand(3, 2, dtype=torch.float32)
    out = sdedit(den, x0, make_sigmas(den, 20), 0.0, sampler="euler_ancestral", noise=NoiseSource(0, 3))
    assert torch.equal(out, x0) and den.calls == 0


def test_sdedit_t0_one_is_independent_of_input_and_equals_text_to_image():
    den = GMMDenoiser(two_moons_mixture())
    sig = make_sigmas(den, 12)
    a = sdedit(den, torch.zeros(5, 2), sig, 1.0, sampler="dpmpp_2m", noise=NoiseSource(3, 5))
    b = sdedit(den, torch.full((5, 2), 9.0), sig, 1.0, sampler="dpmpp_2m", noise=NoiseSource(3, 5))
    t2i = sample(den, (5, 2), sampler="dpmpp_2m", sigmas=sig, seed=3)
    assert torch.equal(a, b) and torch.equal(a, t2i)


def test_sdedit_sweep_faithfulness_falls_and_t0_one_reproduces_prior():
    """The thesis's Fig. 4.2 sweep on the mixture: distance to the input grows with t0; at t0 = 1
    the outputs follow the prior (sliced W to fresh prior samples at sampling-noise level)."""
    mix = two_moons_mixture()
    den = GMMDenoiser(mix)
    n = 400
    x0 = torch.tensor([3.5, -3.0], dtype=torch.float64).expand(n, 2).clone()  # an off-distribution "sketch"
    sig = make_sigmas(den, 20)
    dist = []
    for t0 in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        out = sdedit(den, x0, sig, t0, sampler="dpmpp_2m", noise=NoiseSource(0, n))
        dist.append(float((out - x0).norm(dim=1).mean()))
    assert dist[0] == 0.0
    assert all(b > a for a, b in zip(dist, dist[1:])), dist
    g = torch.Generator().manual_seed(11)
    prior, prior2 = mix.sample(n, g), mix.sample(n, g)
    sw = sliced_wasserstein(out, prior)
    assert sw < 2 * sliced_wasserstein(prior2, prior) + 0.05, sw


@pytest.mark.parametrize("name", list_samplers())
def test_sdedit_works_with_every_sampler(name):
    den = GMMDenoiser(two_moons_mixture())
    x0 = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.5, -2.5], [0.0, 0.0]])
    sig = make_sigmas(den, 8)
    out = sdedit(den, x0, sig, 0.25, sampler=name, noise=NoiseSource(0, 4))
    assert out.shape == x0.shape and torch.isfinite(out).all()
    assert (out - x0).norm(dim=1).max() < 1.5  # low strength stays near the input
    assert torch.equal(sdedit(den, x0, sig, 0.0, sampler=name, noise=NoiseSource(0, 4)), x0)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), True, "0.5"])
def test_sdedit_bad_strength(bad):
    sig = make_sigmas(CORRELATED, 10)
    with pytest.raises(ValueError, match=r"strength"):
        sdedit_start(torch.zeros(1, 2), sig, bad, NoiseSource(0, 1))


def test_sdedit_bad_noise_and_schedule():
    sig = make_sigmas(CORRELATED, 10)
    with pytest.raises(ValueError, match="noise"):
        sdedit_start(torch.zeros(2, 2), sig, 0.5, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="descending"):
        sdedit_start(torch.zeros(2, 2), torch.tensor([1.0, 2.0, 0.0]), 0.5, NoiseSource(0, 2))
    with pytest.raises(ValueError, match="NoiseSource"):
        sdedit(CORRELATED, torch.zeros(2, 2), sig, 0.5)


# --------------------------------------------------------------------------- inpainting: blending


def _blend_run(den, mask, known, n, sampler, steps=30, renoise=None):
    wrapped = BlendInpaint(den, mask, known, renoise=renoise)
    raw = sample(wrapped, (n, known.shape[1]), sampler=sampler, steps=steps, seed=0, dtype=torch.float64)
    return raw, wrapped.finalize(raw)


@pytest.mark.parametrize("sampler,renoise", [("heun", False), ("euler_ancestral", False), ("euler_ancestral", True)])
def test_blend_keeps_known_and_samples_independent_block_exactly(sampler, renoise):
    """When the unknown block is independent of the known one, blending samples its exact
    conditional: the unknown coordinates are exactly those of the same sampler run without a
    mask (same seeds), and with an accurate ODE sampler they match the closed form."""
    n, k_idx, u_idx = 600, torch.tensor([0, 2]), torch.tensor([1, 3])
    a = torch.tensor([2.0, -1.0], dtype=torch.float64)
    known = torch.zeros(1, 4, dtype=torch.float64)
    known[0, k_idx] = a
    mask = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    raw, out = _blend_run(BLOCKS, mask, known, n, sampler, renoise=NoiseSource(100, n) if renoise else None)
    assert (raw[:, k_idx] - a).abs().max() < 1e-9  # the sampler itself lands on the known data
    assert torch.equal(out[:, k_idx], a.expand(n, 2))  # and finalize makes it bit-exact
    plain = sample(BLOCKS, (n, 4), sampler=sampler, steps=30, seed=0, dtype=torch.float64)
    torch.testing.assert_close(out[:, u_idx], plain[:, u_idx], rtol=0, atol=1e-9)
    if sampler == "heun":
        mean, cov = BLOCKS.conditional(k_idx, u_idx, a)
        xu = out[:, u_idx]
        se = (cov.diagonal() / n).sqrt()
        assert ((xu.mean(0) - mean).abs() < 4 * se).all(), (xu.mean(0), mean)
        torch.testing.assert_close(torch.cov(xu.T), cov, rtol=0, atol=0.12)


def test_blend_bias_on_correlated_coordinates_and_repaint_reduces_it():
    """x ~ N(0, [[1, .8], [.8, 1]]), x_1 known = 1 → x_2 | x_1 ~ N(0.8, 0.36).

    Blending only ever shows the network the *noised* known coordinate, so its x_2 is pulled
    towards the prior mean 0 (a documented limitation); RePaint's resampling moves it most of the
    way to the conditional, with a looser tolerance than an exact sampler would need."""
    n = 256
    known = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[0.0, 1.0]])
    mean, cov = CORRELATED.conditional(torch.tensor([0]), torch.tensor([1]), known[0, :1])
    _, blended = _blend_run(CORRELATED, mask, known, n, "euler_ancestral")
    blend_err = abs(float(blended[:, 1].mean()) - float(mean))
    assert 0.15 < float(blended[:, 1].mean()) < 0.65  # biased towards the prior, but informed by x_1

    sig = make_sigmas(CORRELATED, 30)
    noise = NoiseSource(0, n)
    x = noise.randn((2,), dtype=torch.float64) * float(sig[0])
    out = repaint_sample(CORRELATED, x, sig, noise=noise, mask=mask, known=known, jump_length=2, resamples=8)
    assert torch.equal(out[:, 0], torch.ones(n, dtype=torch.float64))
    rp_mean, rp_var = float(out[:, 1].mean()), float(out[:, 1].var())
    assert abs(rp_mean - float(mean)) < 0.12, rp_mean
    assert 0.18 < rp_var < 0.5, rp_var  # true 0.36 (resampling shrinks it somewhat)
    assert abs(rp_mean - float(mean)) < 0.4 * blend_err


def test_blend_inside_cfg_tiles_mask_over_both_branches():
    den = GMMDenoiser(two_moons_mixture())
    known = torch.tensor([[1.5, 0.0]] * 3)
    mask = torch.tensor([[0.0, 1.0]])
    cfg = ClassifierFreeGuidance(BlendInpaint(den, mask, known), 3.0, Cond(class_labels=torch.tensor([-1])))
    out = cfg(torch.randn(3, 2), 0.8, Cond(class_labels=torch.tensor([0, 1, 2])))
    torch.testing.assert_close(out[:, 0], known[:, 0])  # D_known + γ·0 on the known coordinate


def test_renoise_reuses_one_draw_per_sigma():
    seen = []

    class Rec(torch.nn.Module):
        sigma_min, sigma_max = 0.01, 10.0

        def forward(self, x, sigma, cond=None):
            seen.append(x.clone())
            return torch.zeros_like(x)

    blend = BlendInpaint(Rec(), torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), renoise=NoiseSource(0, 2))
    x = torch.ones(2, 2)
    blend(x, 2.0), blend(x, 2.0), blend(x, 1.0)
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])
    assert torch.equal(seen[0][:, 1], x[:, 1])  # unknown part passed through
    assert 0.2 < float(seen[0][:, 0].abs().mean() / 2.0) < 5  # known part: 0 + 2·z


# --------------------------------------------------------------------------- RePaint


def test_repaint_schedule():
    assert repaint_schedule(5, 2, 1) == [0, 1, 2, 3, 4, 5]
    assert repaint_schedule(6, 2, 2) == [0, 1, 2, 3, 4, 2, 3, 4, 5, 6, 4, 5, 6]
    seq = repaint_schedule(20, 5, 3)
    down = sum(b > a for a, b in zip(seq, seq[1:]))
    assert seq[-1] == 20 and min(seq) == 0 and down == 20 + 3 * 2 * 5  # jump points 20, 15, 10
    with pytest.raises(ValueError, match="jump_length"):
        repaint_schedule(10, 0, 2)


def test_repaint_callback_and_errors():
    sig = make_sigmas(CORRELATED, 6)
    steps = []
    known, mask = torch.zeros(2, 2, dtype=torch.float64), torch.tensor([[0.0, 1.0]])
    x = torch.randn(2, 2, dtype=torch.float64) * float(sig[0])
    out = repaint_sample(CORRELATED, x, sig, noise=NoiseSource(0, 2), mask=mask, known=known,
                         jump_length=2, resamples=2, callback=lambda d: steps.append(d["i"]))
    assert len(steps) == 6 + 2 * 2 and steps[-1] == 5  # jump points 6 and 4, one resample each
    assert torch.equal(out[:, 0], known[:, 0])
    with pytest.raises(ValueError, match="NoiseSource"):
        repaint_sample(CORRELATED, x, sig, mask=mask, known=known)
    with pytest.raises(ValueError, match="empty"):
        repaint_sample(CORRELATED, x, sig, noise=NoiseSource(0, 2), mask=torch.zeros(1, 2), known=known)
    with pytest.raises(ValueError, match="does not fit"):
        repaint_sample(CORRELATED, x, sig, noise=NoiseSource(0, 2), mask=torch.ones(1, 3), known=known)


def test_blend_bad_masks():
    img = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="does not fit"):
        BlendInpaint(CORRELATED, torch.ones(1, 1, 4, 4), img)
    with pytest.raises(ValueError, match="empty"):
        BlendInpaint(CORRELATED, torch.zeros(1, 1, 8, 8), img)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BlendInpaint(CORRELATED, torch.full((1, 1, 8, 8), 2.0), img)
    with pytest.raises(ValueError, match="NoiseSource"):
        BlendInpaint(CORRELATED, torch.ones(1, 1, 8, 8), img, renoise=3)
