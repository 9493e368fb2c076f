"""β tables, the forward process and σ schedules (thesis 2.4.1, eq. 2.9-2.11)."""

from __future__ import annotations

import math

import pytest
import torch

from condiff.schedules import (
    DiscreteSchedule,
    alphas_cumprod_from_betas,
    append_zero,
    check_sigmas,
    cosine_betas,
    karras_sigmas,
    linear_betas,
    q_sample,
    scaled_linear_betas,
    ve_sigmas,
    vp_sigmas,
)


def test_linear_betas_values():
    b = linear_betas(1000)
    assert b.dtype == torch.float64 and len(b) == 1000
    assert float(b[0]) == pytest.approx(1e-4) and float(b[-1]) == pytest.approx(0.02)
    assert float(b[500] - b[499]) == pytest.approx((0.02 - 1e-4) / 999)
    # Ho et al.: ᾱ_T ≈ 4e-5 for the linear schedule (x_T ≈ pure noise)
    abar = alphas_cumprod_from_betas(b)
    assert 1e-5 < float(abar[-1]) < 1e-4


def test_scaled_linear_is_linear_in_sqrt_beta():
    b = scaled_linear_betas(1000)
    d = b.sqrt().diff()
    torch.testing.assert_close(d, torch.full_like(d, float(d[0])))
    assert float(b[0]) == pytest.approx(0.00085) and float(b[-1]) == pytest.approx(0.012)


def test_cosine_alpha_bar_endpoints_and_shape():
    T, s = 1000, 0.008
    abar = alphas_cumprod_from_betas(cosine_betas(T, s))
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    assert float(abar[0]) == pytest.approx(f(1) / f(0), rel=1e-9)  # ≈ 1 - 4e-5
    assert float(abar[0]) > 0.9999
    assert float(abar[-1]) < 1e-6  # ends at (almost) pure noise
    assert float(abar[T // 2 - 1]) == pytest.approx(f(T // 2) / f(0), rel=1e-9)
    # the cosine schedule destroys information more slowly than the linear one (thesis Fig. 2.2)
    lin = alphas_cumprod_from_betas(linear_betas(T))
    assert float(abar[T // 2]) > float(lin[T // 2])
    assert float(cosine_betas(T).max()) <= 0.999


def test_alphas_cumprod_is_the_product_eq_2_11():
    b = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    torch.testing.assert_close(alphas_cumprod_from_betas(b), torch.tensor([0.9, 0.72, 0.504], dtype=torch.float64))
    for bad in (torch.tensor([0.1, 1.0]), torch.tensor([0.0, 0.1]), torch.tensor([])):
        with pytest.raises(ValueError):
            alphas_cumprod_from_betas(bad)


def test_discrete_schedule_sigmas_and_betas():
    sched = DiscreteSchedule.named("linear", 1000)
    torch.testing.assert_close(sched.betas, linear_betas(1000))
    abar = sched.alphas_cumprod
    torch.testing.assert_close(sched.sigmas, ((1 - abar) / abar).sqrt())
    assert sched.sigma_min == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)))
    assert 150 < sched.sigma_max < 160  # the well-known σ_max ≈ 157 of the linear schedule
    with pytest.raises(ValueError, match="unknown beta schedule"):
        DiscreteSchedule.named("quadratic")


def test_t_sigma_round_trip():
    sched = DiscreteSchedule.named("cosine", 1000)
    t = torch.tensor([0.0, 1.0, 17.25, 500.5, 998.9, 999.0], dtype=torch.float64)
    torch.testing.assert_close(sched.sigma_to_t(sched.t_to_sigma(t)), t, atol=1e-9, rtol=0)
    ints = torch.arange(0, 1000, 37)
    torch.testing.assert_close(sched.t_to_sigma(ints.double()), sched.sigmas[ints])
    # σ outside the table clamps to its ends
    assert float(sched.sigma_to_t(torch.tensor(1e-9))) == 0.0
    assert float(sched.sigma_to_t(torch.tensor(1e9))) == 999.0
    with pytest.raises(ValueError):
        sched.t_to_sigma(torch.tensor(1000.0))
    with pytest.raises(ValueError):
        sched.sigma_to_t(torch.tensor(-1.0))


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 50, 61, 103, 1000])
def test_timestep_sigmas_are_valid_schedules(spacing, steps):
    sched = DiscreteSchedule.named("linear", 1000)
    sig = sched.timestep_sigmas(steps, spacing)
    check_sigmas(sig)
    assert len(sig) == steps + 1
    # every σ is one of the table's own levels
    assert all(torch.isclose(sched.sigmas, s).any() for s in sig[:-1])
    if spacing != "leading":
        assert float(sig[0]) == pytest.approx(sched.sigma_max)  # trailing/linspace start at t = T-1


def test_timestep_sigmas_errors():
    sched = DiscreteSchedule.named("linear", 100)
    with pytest.raises(ValueError, match="exceeds"):
        sched.timestep_sigmas(101)
    with pytest.raises(ValueError, match="spacing"):
        sched.timestep_sigmas(10, "random")


def test_q_sample_moments_eq_2_10():
    abar = alphas_cumprod_from_betas(linear_betas(1000))
    n = 20000
    x0 = torch.full((n, 1), 2.0, dtype=torch.float64)
    t = torch.full((n,), 300)
    noise = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xt = q_sample(x0, t, abar, noise)
    a = float(abar[300])
    # standard errors: mean √(1-ā)/√n ≈ 0.007, std ≈ 0.005; tolerances 4 s.e.
    assert float(xt.mean()) == pytest.approx(2 * math.sqrt(a), abs=0.03)
    assert float(xt.std()) == pytest.approx(math.sqrt(1 - a), abs=0.02)
    torch.testing.assert_close(xt, math.sqrt(a) * x0 + math.sqrt(1 - a) * noise)  # the reparametrisation
    with pytest.raises(ValueError, match="noise shape"):
        q_sample(x0, t, abar, noise[:10])


def test_karras_sigmas_ends_and_rho_spacing():
    sig = karras_sigmas(10, 0.002, 80.0, rho=7.0)
    assert len(sig) == 11 and float(sig[0]) == pytest.approx(80.0) and float(sig[-2]) == pytest.approx(0.002)
    assert float(sig[-1]) == 0.0
    roots = sig[:-1] ** (1 / 7)
    torch.testing.assert_close(roots.diff(), torch.full((9,), float(roots.diff()[0]), dtype=torch.float64))
    torch.testing.assert_close(karras_sigmas(1, 0.1, 10.0), torch.tensor([10.0, 0.0], dtype=torch.float64))


def test_ve_and_vp_sigmas():
    sig = ve_sigmas(5, 0.01, 50.0)
    assert float(sig[0]) == pytest.approx(50.0) and float(sig[-2]) == pytest.approx(0.01) and float(sig[-1]) == 0
    ratio = sig[1:-1] / sig[:-2]
    torch.testing.assert_close(ratio, torch.full_like(ratio, (0.01 / 50) ** 0.25))
    vp = vp_sigmas(4)
    check_sigmas(vp)
    assert float(vp[0]) == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1))


def test_check_sigmas_errors():
    good = append_zero(torch.tensor([3.0, 2.0, 1.0]))
    assert check_sigmas(good) is good
    cases = {
        "at least 2": torch.tensor([0.0]),
        "NaN": torch.tensor([float("nan"), 0.0]),
        "non-negative": torch.tensor([1.0, -1.0, 0.0]),
        "end in 0": torch.tensor([2.0, 1.0]),
        "strictly descending": torch.tensor([1.0, 1.0, 0.0]),
    }
    for message, sig in cases.items():
        with pytest.raises(ValueError, match=message):
            check_sigmas(sig)
    with pytest.raises(ValueError, match="steps"):
        karras_sigmas(0, 0.1, 1.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        ve_sigmas(3, 1.0, 0.5)
