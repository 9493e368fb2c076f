"""Diffusion losses: known expectations with the exact denoiser, native forms, seeding, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from condiff.denoisers import NetworkDenoiser, edm_denoiser, eps_denoiser, score_denoiser, v_denoiser
from condiff.losses import (
    ContinuousScoreLoss,
    DDPMEpsLoss,
    LogNormalSigmas,
    NCSNScoreLoss,
    TableSigmas,
    VPredictionLoss,
    WeightedDenoisingLoss,
)
from condiff.nn.toy import ToyMLP
from condiff.noise import NoiseSource
from condiff.schedules import DiscreteSchedule
from condiff.testing.gmm import GaussianMixture, GMMDenoiser, two_moons_mixture

SCHED = DiscreteSchedule.named("linear", 1000)
COV = torch.tensor([[1.5, 0.4], [0.4, 0.5]], dtype=torch.float64)
GAUSS = GaussianMixture(torch.ones(1), torch.tensor([[0.5, -1.0]]), COV[None])


def _posterior_mse(sigma: torch.Tensor) -> torch.Tensor:
    """E‖E[x0|x] − x0‖²/d for Gaussian data: tr((Σ⁻¹ + σ⁻² I)⁻¹)/d, per σ (float64)."""
    sigma = sigma.double().reshape(-1)
    prec = torch.linalg.inv(COV)[None] + sigma.pow(-2)[:, None, None] * torch.eye(2, dtype=torch.float64)
    return torch.linalg.inv(prec).diagonal(dim1=-2, dim2=-1).sum(-1) / 2


def _lognormal_expectation(fn, p_mean, p_std, n=200):
    """E fn(σ) for ln σ ~ N(p_mean, p_std²) by Gauss–Hermite quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n)
    sigma = torch.exp(p_mean + p_std * torch.from_numpy(nodes))
    return float((torch.from_numpy(weights) * fn(sigma)).sum() / math.sqrt(2 * math.pi))


# expected value of each loss with the exact denoiser on Gaussian data, in closed form / quadrature
def _expected_ddpm():
    s = SCHED.sigmas
    return float((_posterior_mse(s) / s**2).mean())


def _expected_ncsn(loss: NCSNScoreLoss):
    s = loss.levels
    return float((_posterior_mse(s) / s**2).mean())


def _expected_v():
    s = SCHED.sigmas
    return float((_posterior_mse(s) * (s**2 + 1) / s**2).mean())


def _expected_loguniform_sigma2(smin, smax, n=20001):
    u = torch.linspace(math.log(smin), math.log(smax), n, dtype=torch.float64).exp()
    vals = _posterior_mse(u) / u**2
    return float(torch.trapezoid(vals, torch.linspace(0, 1, n, dtype=torch.float64)))


def _expected_edm(sd):
    return _lognormal_expectation(lambda s: _posterior_mse(s) * (s**2 + sd**2) / (s * sd) ** 2, -1.2, 1.2)


NCSN = NCSNScoreLoss(0.01, 10.0, levels=10)
CASES = {
    "ddpm_eps": (DDPMEpsLoss(SCHED), _expected_ddpm),
    "ncsn_dsm": (NCSN, lambda: _expected_ncsn(NCSN)),
    "v": (VPredictionLoss(SCHED), _expected_v),
    "continuous_sigma2_loguniform": (
        ContinuousScoreLoss("loguniform", "sigma2", sigma_min=0.02, sigma_max=20.0),
        lambda: _expected_loguniform_sigma2(0.02, 20.0),
    ),
    "continuous_edm_lognormal": (ContinuousScoreLoss("lognormal", "edm", sigma_data=0.8), lambda: _expected_edm(0.8)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_denoiser_reaches_the_closed_form_irreducible_loss(name):
    loss, expected_fn = CASES[name]
    n = 40000
    x0 = GAUSS.sample(n, torch.Generator().manual_seed(1)).float()
    per_sample = loss(GMMDenoiser(GAUSS), x0, None, torch.Generator().manual_seed(2))
    assert per_sample.shape == (n,) and per_sample.dtype == torch.float32
    expected = expected_fn()
    stderr = float(per_sample.double().std()) / math.sqrt(n)
    assert abs(float(per_sample.double().mean()) - expected) < 4 * stderr + 1e-4 * expected, (name, expected)


@pytest.mark.parametrize("name", sorted(CASES))
def test_perturbed_denoiser_has_a_higher_loss_on_the_mixture(name):
    loss, _ = CASES[name]
    mixture = two_moons_mixture()
    exact = GMMDenoiser(mixture)
    x0 = mixture.sample(8000, torch.Generator().manual_seed(3)).float()

    def shrunk(x, sigma, cond=None):  # a plausible but wrong denoiser: 5 % too close to the origin
        return 0.95 * exact(x, sigma, cond)

    l_exact = loss(exact, x0, None, torch.Generator().manual_seed(4)).mean()
    l_shrunk = loss(shrunk, x0, None, torch.Generator().manual_seed(4)).mean()  # same σ and ε draws
    assert l_shrunk > l_exact * 1.02


def _native_case(kind: str):
    torch.manual_seed(0)
    net = ToyMLP(2, 32, 2, time_scale=1.0 if kind in ("eps", "v") else 50.0).double()
    torch.nn.init.normal_(net.out.weight, std=0.5)  # a non-trivial network output
    if kind == "eps":
        return eps_denoiser(net, SCHED), DDPMEpsLoss(SCHED)
    if kind == "v":
        return v_denoiser(net, SCHED), VPredictionLoss(SCHED)
    if kind == "edm":
        return edm_denoiser(net, 0.002, 80.0, 0.7), ContinuousScoreLoss("lognormal", "edm", sigma_data=0.7)
    return score_denoiser(net, 0.01, 10.0), NCSNScoreLoss(0.01, 10.0, 10)


@pytest.mark.parametrize("kind", ["eps", "v", "edm", "score"])
def test_loss_equals_the_native_regression_on_the_network_output(kind):
    """λ(σ)‖D − x0‖² is ‖ε̂ − ε‖² / ‖v̂ − v‖² / ‖F − F*‖² / σ²‖ŝ − ∇log p(x̃|x)‖² (eq. 2.13, 2.6)."""
    den, loss = _native_case(kind)
    x0 = two_moons_mixture().sample(256, torch.Generator().manual_seed(5))  # float64
    got = loss(den, x0, None, torch.Generator().manual_seed(6))
    sigma, eps, x = loss.draw(x0, torch.Generator().manual_seed(6))
    sigma = sigma.double()
    c_in, _, _ = den.scalings(sigma)
    out = den.net(x * c_in[:, None], den.time(sigma), None)
    target = den.predict_from_x0(x, sigma, x0, eps)
    if kind == "eps":  # the network sees x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε (eq. 2.10) and regresses ε
        t = loss.table.indices(len(x0), torch.Generator().manual_seed(6), "cpu")
        abar = SCHED.alphas_cumprod[t][:, None]
        assert torch.allclose(x * c_in[:, None], abar.sqrt() * x0 + (1 - abar).sqrt() * eps)
        assert torch.allclose(target, eps)
    native = (out - target).pow(2).mean(1)
    if kind == "score":  # σ² ‖ŝ − (−ε/σ)‖²  (eq. 2.6)
        native = sigma**2 * native
        assert torch.allclose(target, -eps / sigma[:, None])
    assert torch.allclose(got.double(), native, rtol=1e-5, atol=1e-8)


def test_noise_source_makes_each_samples_loss_independent_of_its_batch():
    mixture = two_moons_mixture()
    den = GMMDenoiser(mixture)
    x0 = mixture.sample(5, torch.Generator().manual_seed(7)).float()
    loss = ContinuousScoreLoss("lognormal", "edm")
    batch = loss(den, x0, None, NoiseSource([10, 11, 12, 13, 14]))
    alone = torch.cat([loss(den, x0[i : i + 1], None, NoiseSource([10 + i])) for i in range(5)])
    assert torch.allclose(batch, alone, rtol=1e-6)
    again = loss(den, x0, None, NoiseSource([10, 11, 12, 13, 14]))
    assert torch.equal(batch, again)
    other = loss(den, x0, None, NoiseSource([20, 21, 22, 23, 24]))
    assert not torch.allclose(batch, other)


def test_sigma_samplers_draw_the_stated_distributions():
    g = torch.Generator().manual_seed(8)
    table = TableSigmas(torch.tensor([0.1, 1.0, 10.0, 100.0]))
    draws = table(40000, g, "cpu").double()
    freq = torch.stack([(draws.sub(s).abs() < 1e-3 * s).double().mean() for s in table.sigmas])
    assert torch.allclose(freq, torch.full((4,), 0.25, dtype=torch.float64), atol=0.015)
    logs = LogNormalSigmas(-1.2, 1.2)(40000, g, "cpu").log()
    assert abs(float(logs.mean()) + 1.2) < 0.03 and abs(float(logs.std()) - 1.2) < 0.03
    ncsn = NCSNScoreLoss(0.01, 10.0, levels=10).levels
    ratios = ncsn[1:] / ncsn[:-1]
    assert len(ncsn) == 10 and torch.allclose(ratios, ratios[0].expand(9)) and math.isclose(float(ncsn[0]), 10.0)


def test_bad_inputs_raise_clear_errors():
    den = GMMDenoiser(two_moons_mixture())
    x0 = torch.zeros(4, 2)
    loss = DDPMEpsLoss(SCHED)
    with pytest.raises(ValueError, match="Generator or a condiff.noise.NoiseSource"):
        loss(den, x0, None, 123)
    with pytest.raises(ValueError, match="3 seeds but the batch has 4"):
        loss(den, x0, None, NoiseSource([1, 2, 3]))
    with pytest.raises(ValueError, match="batch dimension"):
        loss(den, torch.zeros(2), None, torch.Generator())
    with pytest.raises(ValueError, match="unknown loss weighting"):
        WeightedDenoisingLoss(TableSigmas(torch.ones(1)), "snr-ish")
    with pytest.raises(ValueError, match="unknown σ distribution"):
        ContinuousScoreLoss("uniform")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        ContinuousScoreLoss("loguniform", sigma_min=1.0, sigma_max=0.5)


def test_loss_backpropagates_into_the_network():
    den, loss = _native_case("v")
    x0 = two_moons_mixture().sample(64, torch.Generator().manual_seed(9))
    loss(den, x0, None, torch.Generator().manual_seed(1)).mean().backward()
    assert isinstance(den, NetworkDenoiser)
    grads = [p.grad for p in den.net.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
