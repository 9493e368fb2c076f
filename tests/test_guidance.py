"""Classifier-free and classifier guidance (thesis eq. 3.4, 3.8, 3.9) on the exact Gaussian-mixture denoiser."""

import math

import pytest
import torch

from condiff.denoisers import Cond, NetworkDenoiser, LogSigmaTime
from condiff.guidance import ClassifierFreeGuidance, ClassifierGuidance, cfg_combine
from condiff.samplers import sample
from condiff.testing.gmm import GMMDenoiser, sliced_wasserstein, two_moons_mixture

SIGMAS = [0.05, 0.5, 2.0, 10.0]


@pytest.fixture(scope="module")
def mix():
    return two_moons_mixture()


def _points(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64) * 2


def _labels(n, seed=1):
    return torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))


NULL = Cond(class_labels=torch.tensor([-1]))


@pytest.mark.parametrize("sigma", SIGMAS)
def test_cfg_scale_one_is_conditional_and_zero_unconditional(mix, sigma):
    den = GMMDenoiser(mix)
    x, y = _points(), _labels(64)
    cond = Cond(class_labels=y)
    s = torch.full((64,), sigma, dtype=torch.float64)
    exact_cond = mix.posterior_mean(x, s, y)
    exact_uncond = mix.posterior_mean(x, s)
    assert not torch.allclose(exact_cond, exact_uncond, atol=1e-3)  # the test can tell them apart
    torch.testing.assert_close(ClassifierFreeGuidance(den, 1.0, NULL)(x, sigma, cond), exact_cond, rtol=0, atol=1e-12)
    torch.testing.assert_close(ClassifierFreeGuidance(den, 0.0, NULL)(x, sigma, cond), exact_uncond, rtol=0, atol=1e-12)


def test_cfg_extrapolates_and_batches_in_one_call(mix):
    x, y, sigma = _points(), _labels(64), 1.0
    cond = Cond(class_labels=y)
    den = GMMDenoiser(mix)
    d_c, d_u = den(x, sigma, cond), den(x, sigma, Cond(class_labels=torch.full((64,), -1)))
    den.calls = 0
    batched = ClassifierFreeGuidance(den, 4.0, NULL)(x, sigma, cond)
    assert den.calls == 1
    den.calls = 0
    twice = ClassifierFreeGuidance(den, 4.0, NULL, batched=False)(x, sigma, cond)
    assert den.calls == 2
    torch.testing.assert_close(batched, d_u + 4.0 * (d_c - d_u), rtol=0, atol=1e-12)
    torch.testing.assert_close(batched, twice, rtol=0, atol=1e-12)
    den.calls = 0
    ClassifierFreeGuidance(den, 1.0, NULL)(x, sigma, cond)
    assert den.calls == 1  # γ = 1 needs no unconditional branch


def test_cfg_negative_prompt_replaces_the_null_branch(mix):
    den = GMMDenoiser(mix)
    x, sigma = _points(), 0.7
    cond = Cond(class_labels=torch.zeros(64, dtype=torch.long))
    neg = Cond(class_labels=torch.tensor([2]))
    out = ClassifierFreeGuidance(den, 2.0, neg)(x, sigma, cond)
    d0 = den(x, sigma, cond)
    d2 = den(x, sigma, Cond(class_labels=torch.full((64,), 2)))
    torch.testing.assert_close(out, 2 * d0 - d2, rtol=0, atol=1e-12)
    # pushed away from component 2 (its mean) further than the plain conditional denoiser
    mu2 = mix.means[2]
    assert (out - mu2).norm(dim=1).mean() > (d0 - mu2).norm(dim=1).mean()


def test_cfg_sigma_interval_per_sample(mix):
    den = GMMDenoiser(mix)
    x, y = _points(6), _labels(6)
    cond = Cond(class_labels=y)
    sigma = torch.tensor([0.1, 1.0, 5.0, 0.1, 1.0, 5.0], dtype=torch.float64)
    guided = ClassifierFreeGuidance(den, 3.0, NULL, sigma_interval=(0.5, 2.0))(x, sigma, cond)
    full = ClassifierFreeGuidance(den, 3.0, NULL)(x, sigma, cond)
    plain = den(x, sigma, cond)
    inside = torch.tensor([False, True, False, False, True, False])
    torch.testing.assert_close(guided[inside], full[inside], rtol=0, atol=1e-12)
    torch.testing.assert_close(guided[~inside], plain[~inside], rtol=0, atol=1e-12)
    den.calls = 0
    ClassifierFreeGuidance(den, 3.0, NULL, sigma_interval=(0.5, 2.0))(x, 10.0, cond)
    assert den.calls == 1  # outside the interval: only the conditional branch runs


class _Recorder(torch.nn.Module):
    sigma_min, sigma_max = 0.01, 10.0

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, sigma, cond=None):
        self.seen.append(cond)
        return x * 0.5


def test_cfg_negative_branch_inherits_image_fields():
    rec = _Recorder()
    x = torch.randn(2, 4, 8, 8)
    concat = torch.randn(2, 5, 8, 8)
    cond = Cond(context=torch.randn(2, 3, 16), concat=concat, extra={"aug": torch.ones(2)})
    uncond = Cond(context=torch.zeros(1, 3, 16))
    ClassifierFreeGuidance(rec, 7.5, uncond)(x, 1.0, cond)
    (seen,) = rec.seen
    assert seen.context.shape == (4, 3, 16) and seen.context[:2].abs().sum() == 0
    torch.testing.assert_close(seen.concat, torch.cat([concat, concat]))  # masked image in both branches
    assert seen.extra["aug"].shape == (4,)


def test_cfg_is_thesis_eq_3_9_for_eps_models():
    """For an ε-network, CFG on the denoiser equals the denoiser of ε_∅ + s(ε_c − ε_∅) (eq. 3.9)."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(4, 3)  # label 3 = ∅

    class EpsNet(torch.nn.Module):
        def forward(self, x, t, cond):
            return torch.tanh(x * 1.3 + emb(cond.class_labels) + t[:, None])

    net = EpsNet()
    den = NetworkDenoiser(net, "eps", LogSigmaTime(), sigma_min=0.01, sigma_max=50.0)
    x, sigma, s = torch.randn(5, 3), torch.full((5,), 2.5), 6.0
    y, null = torch.tensor([0, 1, 2, 0, 1]), torch.full((5,), 3)
    guided = ClassifierFreeGuidance(den, s, Cond(class_labels=torch.tensor([3])))(x, sigma, Cond(class_labels=y))
    x_in, t = x / math.sqrt(1 + 2.5**2), LogSigmaTime()(sigma)
    with torch.no_grad():
        eps_c, eps_u = net(x_in, t, Cond(class_labels=y)), net(x_in, t, Cond(class_labels=null))
    eps_guided = eps_u + s * (eps_c - eps_u)
    torch.testing.assert_close(guided, x - 2.5 * eps_guided, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cfg_combine(eps_u, eps_c, s), eps_guided)


def test_cfg_bad_input():
    den = GMMDenoiser(two_moons_mixture())
    with pytest.raises(ValueError, match="finite"):
        ClassifierFreeGuidance(den, float("nan"), NULL)
    with pytest.raises(ValueError, match="sigma_interval"):
        ClassifierFreeGuidance(den, 2.0, NULL, sigma_interval=(3.0, 1.0))
    with pytest.raises(ValueError, match="Cond"):
        ClassifierFreeGuidance(den, 2.0, None)
    with pytest.raises(ValueError, match="positive conditioning"):
        ClassifierFreeGuidance(den, 2.0, NULL)(_points(4), 1.0, None)
    with pytest.raises(ValueError, match="batch size 3"):
        ClassifierFreeGuidance(den, 2.0, Cond(class_labels=torch.full((3,), -1)))(
            _points(4), 1.0, Cond(class_labels=_labels(4))
        )


# --------------------------------------------------------------------------- classifier guidance


@pytest.mark.parametrize("sigma", SIGMAS)
def test_classifier_guidance_with_exact_classifier_is_exact_conditional(mix, sigma):
    den = GMMDenoiser(mix)
    x, y = _points(), _labels(64)
    guided = ClassifierGuidance(den, mix.classifier_log_probs, 1.0)(x, sigma, Cond(class_labels=y))
    exact = mix.posterior_mean(x, torch.full((64,), sigma, dtype=torch.float64), y)
    torch.testing.assert_close(guided, exact, rtol=1e-7, atol=1e-7 * max(1.0, sigma))
    # γ = 0: the inner (unconditional) denoiser; labels were stripped from its conditioning
    zero = ClassifierGuidance(den, mix.classifier_log_probs, 0.0)(x, sigma, Cond(class_labels=y))
    torch.testing.assert_close(zero, mix.posterior_mean(x, torch.full((64,), sigma, dtype=torch.float64)))


def test_classifier_guidance_scalar_output_and_fixed_labels(mix):
    den = GMMDenoiser(mix)
    x, sigma = _points(16), 1.5
    by_label = ClassifierGuidance(den, mix.classifier_log_probs, 2.0, labels=1)(x, sigma, None)

    def log_p_class1(x, s):
        return mix.classifier_log_probs(x, s)[:, 1]

    scalar = ClassifierGuidance(den, log_p_class1, 2.0)(x, sigma, None)
    torch.testing.assert_close(by_label, scalar)
    assert (by_label - den(x, sigma)).abs().max() > 0.1


def test_classifier_guidance_samples_the_component(mix):
    """Sampling with γ = 1 and the exact noisy classifier reproduces component k (sliced W)."""
    n, k = 800, 2
    den = ClassifierGuidance(GMMDenoiser(mix), mix.classifier_log_probs, 1.0, labels=k)
    out = sample(den, (n, 2), sampler="dpmpp_2m", steps=20, seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    target = mix.sample(n, g, labels=torch.full((n,), k))
    other = mix.sample(n, g, labels=torch.full((n,), 0))
    reference = mix.sample(n, g, labels=torch.full((n,), k))  # sampling error of two exact draws
    sw = sliced_wasserstein(out, target)
    assert sw < 2 * sliced_wasserstein(reference, target) + 0.03, sw
    assert sliced_wasserstein(out, other) > 1.0


def test_classifier_guidance_sigma_interval_and_labels_to_inner(mix):
    rec = _Recorder()
    x = _points(4)
    guide = ClassifierGuidance(rec, mix.classifier_log_probs, 1.0, pass_labels=True, sigma_interval=(1.0, 2.0))
    out = guide(x, 5.0, Cond(class_labels=_labels(4)))
    assert rec.seen[-1].class_labels is not None
    torch.testing.assert_close(out, x * 0.5)  # outside the interval: no gradient term
    ClassifierGuidance(rec, mix.classifier_log_probs, 1.0)(x, 1.5, Cond(class_labels=_labels(4)))
    assert rec.seen[-1].class_labels is None


def test_classifier_guidance_bad_input(mix):
    den = GMMDenoiser(mix)
    with pytest.raises(ValueError, match="target classes"):
        ClassifierGuidance(den, mix.classifier_log_probs, 1.0)(_points(4), 1.0, None)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        ClassifierGuidance(den, mix.classifier_log_probs, 1.0, labels=7)(_points(4), 1.0, None)
    with pytest.raises(ValueError, match="callable"):
        ClassifierGuidance(den, "not a classifier", 1.0)
    with pytest.raises(ValueError, match=r"\[B, K\] or \[B\]"):
        ClassifierGuidance(den, lambda x, s: x.sum(), 1.0)(_points(4), 1.0, None)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_classifier_guidance_under_no_grad_and_inference_mode(mix, mode):
    den = GMMDenoiser(mix)
    x, y = _points(8), _labels(8)
    guide = ClassifierGuidance(den, mix.classifier_log_probs, 1.0)
    expected = guide(x, 0.9, Cond(class_labels=y))
    with mode():
        got = guide(x.clone(), 0.9, Cond(class_labels=y))
    torch.testing.assert_close(got, expected)
