"""The σ-space denoiser contract: every prediction type gives back x̂0 (DESIGN.md §3)."""

from __future__ import annotations

import math

import pytest
import torch

from condiff.denoisers import (
    Cond,
    Denoiser,
    DenoiserWrapper,
    LogSigmaTime,
    NetworkDenoiser,
    edm_denoiser,
    eps_denoiser,
    score_denoiser,
    sigma_batch,
    to_d,
    to_score,
    v_denoiser,
    x0_denoiser,
)
from condiff.schedules import DiscreteSchedule
from condiff.testing.gmm import GMMDenoiser, two_moons_mixture

SCHED = DiscreteSchedule.named("linear", 1000)
GMM = GMMDenoiser(two_moons_mixture())


class ExactNet(torch.nn.Module):
    """A fake network that returns the exact training target of its parameterisation.

    It recovers σ from the time input and x from the scaled input with formulas written out here
    (not with NetworkDenoiser.scalings), asks the mixture for x0 and forms the target.
    """

    def __init__(self, prediction: str, time_to_sigma, input_scale, sigma_data: float = 1.0):
        super().__init__()
        self.prediction, self.time_to_sigma, self.input_scale, self.sd = prediction, time_to_sigma, input_scale, sigma_data

    def forward(self, inp, t, cond=None):
        sigma = self.time_to_sigma(t).to(inp.dtype)
        x = inp / self.input_scale(sigma)[:, None]
        x0 = GMM(x, sigma)
        s = sigma[:, None]
        eps = (x - x0) / s
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        if self.prediction == "v":  # v = √ᾱ ε - √(1-ᾱ) x0 with ᾱ = 1/(1+σ²)
            return (eps - s * x0) / (1 + s**2).sqrt()
        if self.prediction == "score":
            return -eps / s
        # EDM (Karras et al. 2022, Table 1): F = (x0 - c_skip x)/c_out
        c_skip = self.sd**2 / (s**2 + self.sd**2)
        c_out = s * self.sd / (s**2 + self.sd**2).sqrt()
        return (x0 - c_skip * x) / c_out


def _discrete_t_to_sigma(t):
    return SCHED.t_to_sigma(t.double().clamp(0, SCHED.num_steps - 1))


def _vp_scale(sigma):
    return 1 / (1 + sigma**2).sqrt()


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_discrete_wrappers_give_back_the_exact_denoiser(prediction):
    wrap = {"eps": eps_denoiser, "x0": x0_denoiser, "v": v_denoiser}[prediction]
    den = wrap(ExactNet(prediction, _discrete_t_to_sigma, _vp_scale), SCHED)
    assert isinstance(den, Denoiser)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 1000, (64,), generator=g)
    sigma = SCHED.sigmas[idx].float()  # table points: the float32 timestep is exact there
    x = two_moons_mixture().sample(64, g).float() + sigma[:, None] * torch.randn(64, 2, generator=g)
    torch.testing.assert_close(den(x, sigma), GMM(x, sigma), rtol=2e-3, atol=2e-3)
    assert den.sigma_min == pytest.approx(SCHED.sigma_min) and den.sigma_max == pytest.approx(SCHED.sigma_max)


def test_score_and_edm_wrappers_give_back_the_exact_denoiser():
    g = torch.Generator().manual_seed(1)
    sigma = torch.exp(torch.empty(64).uniform_(math.log(0.01), math.log(50.0), generator=g))
    x = two_moons_mixture().sample(64, g).float() + sigma[:, None] * torch.randn(64, 2, generator=g)
    log_time = lambda t: torch.exp(t.double() / 0.25)  # noqa: E731  (LogSigmaTime(0.25) inverted)
    score = score_denoiser(ExactNet("score", log_time, lambda s: torch.ones_like(s)), 0.01, 50.0)
    torch.testing.assert_close(score(x, sigma), GMM(x, sigma), rtol=1e-3, atol=1e-3)
    edm = edm_denoiser(ExactNet("edm", log_time, lambda s: 1 / (s**2 + 0.25).sqrt(), 0.5), 0.002, 80.0, 0.5)
    torch.testing.assert_close(edm(x, sigma), GMM(x, sigma), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score", "edm"])
def test_training_target_round_trips_to_x0(prediction):
    """The target F from predict_from_x0, returned by a network, gives back x0 exactly."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(8, 2, generator=g)
    noise = torch.randn(8, 2, generator=g)
    sigma = torch.tensor([0.05, 0.3, 1.0, 2.0, 5.0, 10.0, 40.0, 80.0])
    x = x0 + sigma[:, None] * noise
    holder = {}
    den = NetworkDenoiser(lambda inp, t, cond: holder["F"], prediction, LogSigmaTime(), sigma_min=0.01, sigma_max=80)
    holder["F"] = den.predict_from_x0(x, sigma, x0, noise)
    torch.testing.assert_close(den(x, sigma), x0, rtol=1e-4, atol=1e-4)


def test_concat_conditioning_and_errors():
    seen = {}

    def net(inp, t, cond):
        seen["inp"] = inp
        return torch.zeros(inp.shape[0], 2, *inp.shape[2:])

    den = NetworkDenoiser(net, "eps", LogSigmaTime(), sigma_min=0.01, sigma_max=80)
    x = torch.randn(2, 2, 4, 4)
    den(x, 1.0, Cond(concat=torch.ones(2, 3, 4, 4)))
    assert seen["inp"].shape == (2, 5, 4, 4)
    torch.testing.assert_close(seen["inp"][:, :2], x / math.sqrt(2))  # VP input scaling at σ = 1
    with pytest.raises(ValueError, match="concat conditioning"):
        den(x, 1.0, Cond(concat=torch.ones(2, 3, 8, 8)))
    with pytest.raises(ValueError, match="unknown prediction type"):
        NetworkDenoiser(net, "flow", LogSigmaTime(), sigma_min=0.01, sigma_max=80)
    with pytest.raises(ValueError, match="non-negative"):
        sigma_batch(torch.tensor([-1.0, 1.0]), x)
    with pytest.raises(ValueError, match="shape"):
        sigma_batch(torch.tensor([1.0, 1.0, 1.0]), x)


def test_cond_cat_select_round_trip():
    a = Cond(context=torch.randn(2, 3, 4), class_labels=torch.tensor([0, 1]), extra={"aug": torch.tensor([0.1, 0.2])},
             control={"down": [torch.randn(2, 1)], "mid": torch.randn(2, 5)})
    b = Cond(context=torch.randn(3, 3, 4), class_labels=torch.tensor([2, 3, 4]),
             extra={"aug": torch.tensor([0.3, 0.4, 0.5])}, control={"down": [torch.randn(3, 1)], "mid": torch.randn(3, 5)})
    both = Cond.cat([a, b])
    assert both.batch_size() == 5
    back = both.select(slice(0, 2))
    torch.testing.assert_close(back.context, a.context)
    torch.testing.assert_close(back.class_labels, a.class_labels)
    torch.testing.assert_close(back.extra["aug"], a.extra["aug"])
    torch.testing.assert_close(back.control["mid"], a.control["mid"])
    torch.testing.assert_close(both.select(torch.tensor([2, 3, 4])).control["down"][0], b.control["down"][0])
    with pytest.raises(ValueError, match="different fields"):
        Cond.cat([Cond(context=torch.randn(1, 3, 4)), Cond(context=torch.randn(1, 3, 4), class_labels=torch.tensor([0]))])
    with pytest.raises(ValueError, match="control"):
        Cond.cat([a, Cond(context=torch.randn(1, 3, 4), class_labels=torch.tensor([0]), extra={"aug": torch.ones(1)})])


def test_score_and_ode_derivative_helpers():
    x = torch.tensor([[1.0, 2.0]])
    x0 = torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(to_score(x, torch.tensor(2.0), x0), torch.tensor([[-0.25, -0.25]]))
    torch.testing.assert_close(to_d(x, torch.tensor(2.0), x0), torch.tensor([[0.5, 0.5]]))


def test_wrapper_forwards_sigma_range():
    w = DenoiserWrapper(GMM)
    assert (w.sigma_min, w.sigma_max) == (GMM.sigma_min, GMM.sigma_max)
