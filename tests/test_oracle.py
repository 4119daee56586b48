"""The oracle test: the closed-form optimal ε-predictor for Gaussian data bounds a discretized Gaussian.

Data: each dimension is an independent discretized Gaussian, pixel = clip(round((z + 1)·127.5)),
z ~ N(m, s²). Its exact entropy H (nats/dim) is computed from the pmf. A prior whose network returns
E[ε|x_t] for Gaussian data N(m_d, s_d²) with the data's exact mean and variance must give a VLB that is
never below H (beyond three standard errors of the Monte Carlo estimate over images): that is the
bound's basic promise, and a VLB below the entropy means a bug in the terms. With the exact reverse
variance of that Gaussian model the bound must also come close to H.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from diffcodec.prior import Prior, PriorConfig, Reverse, VarianceMode
from diffcodec.schedule import Schedule
from diffcodec.terms import compute_terms
from diffcodec.unet import UNetConfig

M, S = 0.1, 0.3  # in model space [−1, 1]
SIZE = 8
N_IMAGES = 96


def discrete_pmf() -> np.ndarray:
    edges = (np.arange(257) - 0.5) / 127.5 - 1.0
    edges[0], edges[-1] = -np.inf, np.inf
    return np.diff(stats.norm.cdf(edges, loc=M, scale=S))


def data_moments() -> tuple[float, float, float]:
    """(entropy nats/dim, mean, variance) of the discretized data, in model space."""
    p = discrete_pmf()
    x = np.arange(256) / 127.5 - 1.0
    mean = float((p * x).sum())
    var = float((p * (x - mean) ** 2).sum())
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    return entropy, mean, var


def draw_images(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    z = rng.normal(M, S, size=(n, 1, SIZE, SIZE))
    return torch.from_numpy(np.clip(np.round((z + 1.0) * 127.5), 0, 255).astype(np.uint8))


class GaussianOracle(nn.Module):
    """E[ε | x_t] for x_0 ~ N(m, s²) under q(x_t|x_0) = N(√ᾱ x_0, 1 − ᾱ); v = 0 when learned."""

    def __init__(self, base_alpha_bar: np.ndarray, mean: float, var: float, learned: bool):
        super().__init__()
        self.register_buffer("abar", torch.as_tensor(base_alpha_bar, dtype=torch.float64))
        self.mean, self.var, self.learned = mean, var, learned

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.abar[t.long() - 1].view(-1, 1, 1, 1)
        x = x_t.double()
        eps = torch.sqrt(1 - abar) * (x - torch.sqrt(abar) * self.mean) / (abar * self.var + 1 - abar)
        out = eps.float()
        return torch.cat([out, torch.zeros_like(out)], dim=1) if self.learned else out


class ExactVarianceOracle(Prior):
    """The oracle mean with the exact Gaussian-model reverse variance Var(x_{k−1}|x_k)."""

    def __init__(self, config: PriorConfig, var: float, **kw):
        super().__init__(config, **kw)
        self.data_var = var

    def reverse(self, x_t: torch.Tensor, k: torch.Tensor, schedule: Schedule) -> Reverse:
        rev = super().reverse(x_t, k, schedule)
        abar_prev = torch.as_tensor(schedule.alphas_cumprod_prev, dtype=torch.float64)[k]
        beta = torch.as_tensor(schedule.betas, dtype=torch.float64)[k]
        v_prev = abar_prev * self.data_var + 1 - abar_prev
        var = v_prev * beta / ((1 - beta) * v_prev + beta)
        return Reverse(mean=rev.mean, log_variance=torch.log(var).view(-1, 1, 1, 1).expand_as(x_t), x0_hat=rev.x0_hat)


def oracle_prior(variance: str, T: int, exact: bool = False) -> Prior:
    learned = variance == "learned"
    unet = UNetConfig(image_size=SIZE, base_channels=4, channel_mult=(1,), attention_resolutions=(), learn_variance=learned)
    config = PriorConfig(unet=unet, num_timesteps=T, variance=variance, clip_x0=False)
    _, mean, var = data_moments()
    base = Prior(config)
    net = GaussianOracle(base.base_schedule.alphas_cumprod, mean, var, learned)
    return (ExactVarianceOracle(config, var, net=net) if exact else Prior(config, net=net)).eval()


def vlb_gap(prior: Prior, steps: int | None, spacing: str = "even") -> tuple[float, float]:
    """(VLB − H, standard error), nats per dimension."""
    entropy, _, _ = data_moments()
    terms = compute_terms(prior, draw_images(N_IMAGES, seed=7), prior.schedule(steps, spacing), torch.Generator().manual_seed(3))
    per_dim = terms.total_nats / prior.num_dims
    return float(per_dim.mean() - entropy), float(per_dim.std() / math.sqrt(len(per_dim)))


CASES = [(T, steps, spacing) for T, steps, spacing in [(1000, None, "even"), (1000, 25, "even"), (1000, 25, "front"), (40, None, "even")]]


@pytest.mark.parametrize("variance", [m.value for m in VarianceMode])
@pytest.mark.parametrize("T,steps,spacing", CASES)
def test_vlb_never_below_entropy(variance, T, steps, spacing):
    gap, se = vlb_gap(oracle_prior(variance, T), steps, spacing)
    print(f"\n{variance:>7} T={T} steps={steps} {spacing}: VLB − H = {gap / math.log(2):+.4f} ± {se / math.log(2):.4f} bits/dim")
    assert gap > -3 * se


# With the exact reverse variance the only slack is the discreteness of the data (the model's
# continuous marginal vs the pixel grid) plus the respacing; both are measured below and the margins
# hold with room: full T = 1000 chain within 0.06 bits/dim, 25 steps within 0.15.
@pytest.mark.parametrize("T,steps,spacing,margin_bpd", [(1000, None, "even", 0.06), (1000, 25, "front", 0.15), (40, None, "even", 0.06)])
def test_exact_variance_oracle_is_tight(T, steps, spacing, margin_bpd):
    gap, se = vlb_gap(oracle_prior("small", T, exact=True), steps, spacing)
    print(f"\nexact-variance oracle T={T} steps={steps} {spacing}: VLB − H = {gap / math.log(2):+.4f} ± {se / math.log(2):.4f} bits/dim")
    assert gap > -3 * se
    assert gap / math.log(2) < margin_bpd
