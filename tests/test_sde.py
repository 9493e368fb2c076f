"""VE / VP / sub-VP SDEs (thesis eq. 2.18-2.21), SDE samplers and ODE likelihood (Song et al. 2021)."""

from __future__ import annotations

import math

import pytest
import torch

from condiff.likelihood import bits_per_dim, ode_log_likelihood
from condiff.noise import NoiseSource
from condiff.samplers import make_sigmas, sample
from condiff.schedules import vp_sigmas
from condiff.sde import SDEScoreDenoiser, SubVPSDE, VESDE, VPSDE
from condiff.testing.gmm import GaussianMixture, GMMDenoiser, sliced_wasserstein, two_moons_mixture

SDES = {"ve": VESDE(0.01, 50.0), "vp": VPSDE(), "subvp": SubVPSDE()}


@pytest.mark.parametrize("name", SDES)
def test_t_sigma_round_trip(name):
    sde = SDES[name]
    t = torch.linspace(max(sde.t_eps, 0.01), 1.0, 50, dtype=torch.float64)
    torch.testing.assert_close(sde.sigma_to_t(sde.sigma(t)), t, atol=1e-9, rtol=1e-9)
    assert (sde.sigma(t)[1:] > sde.sigma(t)[:-1]).all()  # σ(t) increases
    with pytest.raises(ValueError, match="positive"):
        sde.sigma_to_t(torch.tensor([0.0]))


def test_vp_sigma_matches_the_schedule_table():
    t = torch.linspace(1, 1e-3, 10, dtype=torch.float64)
    torch.testing.assert_close(VPSDE().sigma(t), vp_sigmas(10, beta_d=19.9, beta_min=0.1)[:-1])


@pytest.mark.parametrize("name", SDES)
def test_diffusion_agrees_with_the_marginal_variance(name):
    """For linear SDEs d Var/dt = 2a(t)·Var + g(t)² and d s/dt = a(t)·s: checks f, g, s, std together."""
    sde = SDES[name]
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    var = lambda u: sde.marginal_std(u) ** 2  # noqa: E731
    dvar = (var(t + h) - var(t - h)) / (2 * h)
    if name == "ve":  # x(0) already has σ_min noise: Var(t) - Var(0) is what the SDE adds
        torch.testing.assert_close(dvar, sde.diffusion(t) ** 2, rtol=1e-5, atol=1e-8)
    else:
        torch.testing.assert_close(dvar, 2 * sde.drift_coef(t) * var(t) + sde.diffusion(t) ** 2, rtol=1e-5, atol=1e-8)
    ds = (sde.mean_coef(t + h) - sde.mean_coef(t - h)) / (2 * h)
    torch.testing.assert_close(ds, sde.drift_coef(t) * sde.mean_coef(t), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", SDES)
def test_marginals_match_a_simulation_of_the_forward_sde(name):
    """Euler–Maruyama on eq. 2.18 from fixed x0: mean and std at t = 0.3 and 1 match the formulas.

    10k paths: the sample mean has standard error std/√10000 = 1% of std, the sample std ≈ 0.7%;
    the EM discretisation (200 steps) adds well under 1%; tolerance 4%.
    """
    sde = SDES[name]
    g = torch.Generator().manual_seed(0)
    n, steps = 10000, 200
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64).expand(n, 2)
    x = x0 + (sde.sigma_min * torch.randn(n, 2, generator=g, dtype=torch.float64) if name == "ve" else 0)
    dt = 1.0 / steps
    checks = {int(0.3 * steps): 0.3, steps: 1.0}
    for k in range(steps):
        t = k * dt
        x = x + sde.drift(x, t) * dt + float(sde.diffusion(t)) * math.sqrt(dt) * torch.randn(
            n, 2, generator=g, dtype=torch.float64
        )
        if k + 1 in checks:
            mean, std = sde.marginal(x0[:1], checks[k + 1])
            scale = float(std[0, 0])
            assert (x.mean(0) - mean[0]).abs().max() < 0.04 * scale + 1e-3
            assert (x.std(0) / std[0] - 1).abs().max() < 0.04


@pytest.mark.parametrize("name", SDES)
def test_prior_and_score_mapping(name):
    sde = SDES[name]
    z = sde.prior_sample((3,), NoiseSource(0, 5), dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, sde.prior_std())
    torch.testing.assert_close(sde.prior_log_prob(z), normal.log_prob(z).sum(1))
    # the score of the SDE marginal, computed independently with autograd, equals the mapped denoiser score
    mix = two_moons_mixture()
    t = 0.4
    s, std = float(sde.mean_coef(t)), float(sde.marginal_std(t))
    marginal = GaussianMixture(mix.weights, s * mix.means, s**2 * mix.covs)
    y = (marginal.sample(64, torch.Generator().manual_seed(1)) + std * torch.randn(64, 2, dtype=torch.float64,
         generator=torch.Generator().manual_seed(2))).requires_grad_(True)
    (true_score,) = torch.autograd.grad(marginal.log_prob(y, std).sum(), y)
    got = sde.score_from_denoiser(GMMDenoiser(mix), y.detach(), t)
    torch.testing.assert_close(got, true_score, rtol=1e-6, atol=1e-6)
    # and the inverse mapping: a score model of the SDE seen as a σ-space denoiser
    model = lambda yy, tt, cond=None: sde.score_from_denoiser(GMMDenoiser(mix), yy, tt[0])  # noqa: E731
    den = SDEScoreDenoiser(model, sde)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2
    sigma = sde.sigma(t).expand(16)
    torch.testing.assert_close(den(x, sigma), GMMDenoiser(mix)(x, sigma), rtol=1e-6, atol=1e-6)
    pf = sde.ode_drift(y.detach(), t, true_score)
    rev = sde.reverse_drift(y.detach(), t, true_score)
    torch.testing.assert_close(2 * pf - rev, sde.drift(y.detach(), t))  # f - ½g²s vs f - g²s


@pytest.mark.parametrize("sampler,sde_name", [("euler_maruyama", "vp"), ("euler_maruyama", "subvp"),
                                              ("pc", "vp"), ("euler_maruyama", "ve")])
def test_reverse_sde_samplers_through_an_sde_object(sampler, sde_name):
    """Sampling the mixture with the reverse SDE of VP / sub-VP / VE (threshold as in test_samplers)."""
    mix = two_moons_mixture()
    den = GMMDenoiser(mix)
    g = torch.Generator().manual_seed(99)
    n = 2000
    ref = mix.sample(n, g).float()
    base = sum(sliced_wasserstein(mix.sample(n, g), mix.sample(n, g)) for _ in range(4)) / 4
    sde = SDES[sde_name]
    sigmas = make_sigmas(den, 100, "vp") if sde_name != "ve" else make_sigmas(den, 100, "exponential")
    x = sample(den, (n, 2), sampler=sampler, sigmas=sigmas, seed=5, sde=sde)
    assert sliced_wasserstein(x, ref) < 3 * base


# --------------------------------------------------------------------------- likelihood


def _gaussian():
    cov = torch.tensor([[[0.5, 0.2], [0.2, 0.3]]])
    return GaussianMixture(torch.tensor([1.0]), torch.tensor([[1.0, -0.5]]), cov)


def test_exact_trace_likelihood_matches_the_closed_form():
    """log N(x; μ, Σ + σ_min²) vs. the ODE with exact trace and RK45 (rtol = atol = 1e-5).

    The remaining model error is the prior: N(0, σ_max²) instead of N(μ, Σ + σ_max²), which costs
    |x_T·μ|/σ_max² ≲ 3·σ_max·|μ|/σ_max² ≈ 2e-3 nats at σ_max = 2000; tolerance 5e-3 nats.
    """
    mix = _gaussian()
    den = GMMDenoiser(mix, sigma_min=0.002, sigma_max=2000.0)
    x = mix.sample(32, torch.Generator().manual_seed(0))
    res = ode_log_likelihood(den, x, trace="exact")
    expected = mix.log_prob(x, 0.002)
    assert (res.log_prob - expected).abs().max() < 5e-3
    torch.testing.assert_close(res.bits_per_dim, -res.log_prob / (2 * math.log(2)))
    assert res.latent.std() > 500  # the ODE carried x out to σ_max


def test_heun_integrator_converges_to_the_same_value():
    mix = _gaussian()
    den = GMMDenoiser(mix, sigma_min=0.002, sigma_max=2000.0)
    x = mix.sample(8, torch.Generator().manual_seed(1))
    expected = mix.log_prob(x, 0.002)
    coarse = ode_log_likelihood(den, x, trace="exact", method="heun", steps=50).log_prob
    fine = ode_log_likelihood(den, x, trace="exact", method="heun", steps=200).log_prob
    assert (fine - expected).abs().mean() < 0.25 * (coarse - expected).abs().mean()
    assert (fine - expected).abs().max() < 0.1


def test_hutchinson_is_unbiased_and_bits_per_dim_is_consistent():
    """The Hutchinson estimate of each sample is off by a probe-dependent amount; averaged over
    256 samples it must match the exact mean within 4 standard errors of that average."""
    mix = _gaussian()
    den = GMMDenoiser(mix, sigma_min=0.002, sigma_max=2000.0)
    x = mix.sample(256, torch.Generator().manual_seed(2))
    exact = ode_log_likelihood(den, x, trace="exact", method="heun", steps=60).log_prob
    hutch = ode_log_likelihood(den, x, trace="hutchinson", noise=NoiseSource(0, 256), method="heun", steps=60)
    diff = hutch.log_prob - exact
    assert diff.abs().max() > 1e-3  # the probe really is random
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / 16 + 1e-6
    bpd = bits_per_dim(den, x[:4], trace="hutchinson", noise=NoiseSource(0, 4), method="heun", steps=60,
                       bin_width=2 / 256)
    torch.testing.assert_close(bpd, hutch.bits_per_dim[:4] - math.log2(2 / 256))


def test_likelihood_bad_arguments():
    den = GMMDenoiser(_gaussian())
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="NoiseSource"):
        ode_log_likelihood(den, x)
    with pytest.raises(ValueError, match="trace"):
        ode_log_likelihood(den, x, trace="skilling")
    with pytest.raises(ValueError, match="integrator"):
        ode_log_likelihood(den, x, trace="exact", method="euler")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        ode_log_likelihood(den, x, trace="exact", sigma_min=1.0, sigma_max=0.5)
