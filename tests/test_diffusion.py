import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffcodec.diffusion import (
    as_pixels,
    discretized_gaussian_log_likelihood,
    log_normal_interval,
    normal_kl,
    pixels_to_model,
)
from diffcodec.schedule import make_schedule, respace, spaced_timesteps


def test_kl_against_monte_carlo():
    gen = torch.Generator().manual_seed(1)
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.2, math.log(1.7)
    x = m1 + math.exp(0.5 * lv1) * torch.randn(2_000_000, generator=gen, dtype=torch.float64)
    log_p = torch.distributions.Normal(m1, math.exp(0.5 * lv1)).log_prob(x)
    log_q = torch.distributions.Normal(m2, math.exp(0.5 * lv2)).log_prob(x)
    mc = (log_p - log_q).mean().item()
    se = (log_p - log_q).std().item() / math.sqrt(len(x))
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    exact = normal_kl(t(m1), t(lv1), t(m2), t(lv2)).item()
    assert abs(mc - exact) < 4 * se


@pytest.mark.parametrize("respaced", [False, True])
def test_posterior_matches_brute_force_conditioning(respaced):
    """q(x_{k−1}|x_k, x_0) from the closed form equals Gaussian conditioning of the joint."""
    sched = make_schedule("linear", 1000)
    if respaced:
        sched = respace(sched, spaced_timesteps(1000, 30, "front"))
    abar, abar_prev = sched.alphas_cumprod, sched.alphas_cumprod_prev
    c1, c2 = sched.posterior_mean_coefs
    x0, xk = 0.37, -0.81
    for k in range(1, sched.num_steps):  # array index k ↔ step k+1 ≥ 2
        # Joint of (x_{k-1}, x_k) given x_0: x_k = √α x_{k−1} + √β e.
        alpha = 1 - sched.betas[k]
        m_prev, v_prev = math.sqrt(abar_prev[k]) * x0, 1 - abar_prev[k]
        m_k, v_k = math.sqrt(alpha) * m_prev, alpha * v_prev + sched.betas[k]
        cov = math.sqrt(alpha) * v_prev
        mean = m_prev + cov / v_k * (xk - m_k)
        var = v_prev - cov**2 / v_k
        assert c1[k] * x0 + c2[k] * xk == pytest.approx(mean, rel=1e-9, abs=1e-12)
        assert sched.posterior_variance[k] == pytest.approx(var, rel=1e-9)
        assert math.isclose(v_k, 1 - abar[k], rel_tol=1e-9)


@pytest.mark.parametrize("mean", [-40.0, -3.0, -1.0, -0.5, 0.0, 0.0039, 0.7, 1.0, 2.5, 1e3])
@pytest.mark.parametrize("log_scale", [math.log(1e-6), math.log(1e-3), math.log(0.03), 0.0, math.log(50.0)])
def test_decoder_probabilities_sum_to_one(mean, log_scale):
    x = pixels_to_model(torch.arange(256, dtype=torch.uint8), torch.float64)
    logp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
    assert torch.isfinite(logp).any()
    assert not torch.isnan(logp).any()
    assert torch.exp(logp).sum().item() == pytest.approx(1.0, abs=1e-12)


def test_decoder_masses_agree_with_scipy_including_far_tails():
    x = pixels_to_model(torch.arange(256, dtype=torch.uint8), torch.float64)
    for mean, scale in [(0.0, 0.01), (0.9, 0.002), (-0.95, 0.004), (0.2, 0.3)]:
        got = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, math.log(scale)))
        lo = np.where(x.numpy() < -0.999, -np.inf, x.numpy() - 1 / 255)
        hi = np.where(x.numpy() > 0.999, np.inf, x.numpy() + 1 / 255)
        # scipy: log of the interval mass, computed on the side where it is not a difference of ~1s.
        a, b = (lo - mean) / scale, (hi - mean) / scale
        with np.errstate(divide="ignore"):
            ref = np.where(
                a > 0,
                stats.norm.logsf(a) + np.log1p(-np.exp(stats.norm.logsf(b) - stats.norm.logsf(a))),
                stats.norm.logcdf(b) + np.log1p(-np.exp(stats.norm.logcdf(a) - stats.norm.logcdf(b))),
            )
        finite = ref > -700  # beyond that both are deep in the tail
        np.testing.assert_allclose(got.numpy()[finite], ref[finite], rtol=1e-9)


def test_log_normal_interval_is_finite_far_in_the_tails():
    lo = torch.tensor([30.0, -1e4, 1e3], dtype=torch.float64)
    hi = torch.tensor([30.5, -1e4 + 1, 1e3 + 1], dtype=torch.float64)
    out = log_normal_interval(lo, hi)
    assert torch.isfinite(out).all() and (out < 0).all()


def test_decoder_gradients_are_finite_everywhere():
    x = pixels_to_model(torch.arange(256, dtype=torch.uint8), torch.float64)
    mean = torch.linspace(-3, 3, 256, dtype=torch.float64, requires_grad=True)
    log_scale = torch.full((256,), math.log(0.004), dtype=torch.float64, requires_grad=True)
    discretized_gaussian_log_likelihood(x, mean, log_scale).clamp(min=-1e4).sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.zeros(1, 1, 8, 8), "integer pixels"),
        (torch.zeros(1, 8, 8, dtype=torch.uint8), r"\[B, C, H, W\]"),
        (torch.full((1, 1, 8, 8), 256), "0..255"),
        (torch.full((1, 1, 8, 8), -1), "0..255"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "channels"),
        (torch.zeros(1, 1, 9, 8, dtype=torch.uint8), "9x8"),
        ([[1, 2]], "tensor or array"),
    ],
)
def test_bad_pixels_raise_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        as_pixels(bad, (1, 8, 8))


def test_predict_x0_at_alpha_bar_zero():
    """ᾱ = 0 (last β = 1, as the tiny test priors' schedules end): x_t = ε exactly is 0/0, taken as 0
    (it happened when bf16 rounded ε̂ onto a latent grid value, failing the coder's finite check);
    elsewhere ±∞ as before, and a NaN input stays NaN for the coders' damaged-prior check."""
    from diffcodec.diffusion import predict_x0

    x = torch.tensor([0.5, 0.5, 0.25, float("nan")], dtype=torch.float64)
    eps = torch.tensor([0.5, 0.25, 0.5, 0.0], dtype=torch.float64)
    out = predict_x0(x, eps, torch.zeros(4, dtype=torch.float64))
    assert out[0] == 0 and out[1] == float("inf") and out[2] == float("-inf") and torch.isnan(out[3])
    ab = torch.full((4,), 0.3, dtype=torch.float64)
    torch.testing.assert_close(predict_x0(x[:3], eps[:3], ab[:3]), (x[:3] - (0.7**0.5) * eps[:3]) / 0.3**0.5, rtol=0, atol=0)
