"""Bits-back ANS coding of 8-bit images with a K-step diffusion chain, in the Bit-Swap order.

Stack order for one batch of images x_0 (Kingma, Abbeel & Ho 2019, "Bit-Swap"); Q is the forward
chain, P the prior's reverse chain, both discretized on the latent grids below:

    encoder                                      decoder (the mirror image, run backwards)
    pop  x_1 ~ Q(x_1 | x_0)                      pop  x_K with N(0, I)
    push x_0 with P(x_0 | x_1)                   for k = K .. 2:
    for k = 2 .. K:                                  pop  x_{k-1} with P(x_{k-1} | x_k)
        pop  x_k ~ Q(x_k | x_{k-1})                  push x_k with Q(x_k | x_{k-1})
        push x_{k-1} with P(x_{k-1} | x_k)       pop  x_0 with P(x_0 | x_1)
    push x_K with N(0, I)                        push x_1 with Q(x_1 | x_0)

The net cost is −log P(x_{0:K}) + log Q(x_{1:K} | x_0), whose expectation is the variational bound of
the K-step chain (terms.compute_terms); the seed bits under the first pop come back at the end.

Latents: x_k = n_k·δ_k with integer n_k on a grid δ_k = min(√β_k, √β̃_{k+1})/G (δ_K = √β_K/G), i.e.
about G points per standard deviation of both distributions that code x_k. Every Gaussian is coded as
an integer residual against the rounded mean (mean and std in grid units, snapped to multiples of
2^-20 so that last-bit differences cannot desynchronize encoder and decoder); Q's alphabet covers
±(10σ) and P's residuals escape beyond their alphabet (ans.Stack.push_gaussian_escaped), so P covers
every value Q can emit. P(x_0|x_1) is the DDPM discretized decoder with the exact bin masses of
diffusion.discretized_gaussian_log_likelihood, handed to constriction as a 256-symbol categorical.

Round trip with a stand-in reverse model (a test executes this)::

    >>> import numpy as np
    >>> from diffcodec.schedule import make_schedule
    >>> from diffcodec.coding.ans import Stack
    >>> sched = make_schedule("cosine", 10)
    >>> grid = LatentGrid.build(sched, grid=3.0)
    >>> def reverse(x_k, j):                      # p(x_{j}|x_{j+1}) = N(0.9·x_k, β_j)
    ...     return 0.9 * x_k, np.full_like(x_k, np.log(sched.betas[j]))
    >>> images = np.arange(2 * 1 * 4 * 4, dtype=np.uint8).reshape(2, 1, 4, 4) * 7
    >>> stack = Stack.seeded(0)
    >>> encode_batch(stack, grid, reverse, images)
    >>> bool((decode_batch(stack, grid, reverse, (2, 1, 4, 4)) == images).all())
    True
    >>> stack.words(unseal=True).size == stack.prepended_words   # the seed came back
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..diffusion import discretized_gaussian_log_likelihood
from ..schedule import Schedule
from .ans import PRECISION_BITS, Stack

# p(x_{j} | x_{j+1}) of 0-based reverse step j: x_{j+1} float64 [B, C, H, W] → (mean, log-variance)
ReverseFn = Callable[[np.ndarray, int], "tuple[np.ndarray, np.ndarray]"]

SNAP = 2.0**20  # coder parameters are multiples of 2^-20
MIN_STD = 2.0**-10  # grid units; below this a Gaussian is a point mass anyway
Q_SIGMAS = 10.0  # Q's alphabet radius in its standard deviations (tails beyond are < 2^-24)
P_SIGMAS = 8.0  # P's alphabet radius in nominal standard deviations (beyond: escape)
DECODER_ROWS = 8192  # rows of the 256-bin decoder table computed at once


def snap(a: np.ndarray) -> np.ndarray:
    """Round to the nearest multiple of 2^-20 (float64; exact for |a| < 2^32)."""
    return np.round(np.asarray(a, dtype=np.float64) * SNAP) / SNAP


@dataclass(frozen=True)
class LatentGrid:
    """Grid spacings and fixed coding constants of a K-step chain. Arrays are [K] (index k−1 = step k)."""

    schedule: Schedule
    grid: float  # G: grid points per standard deviation
    delta: np.ndarray  # [K] f64, δ_k
    q_std: np.ndarray  # [K] f64, std of Q(x_k|x_{k−1}) in units of δ_k: √β_k/δ_k
    q_gain: np.ndarray  # [K] f64, mean of Q in units of δ_k per unit of the conditioning value
    q_radius: np.ndarray  # [K] int, alphabet radius of Q(x_k|·)
    p_radius: np.ndarray  # [K] int, alphabet radius of P(x_{k−1}|x_k) in units of δ_{k−1} (k ≥ 2)
    prior_std: float  # N(0, I) in units of δ_K
    prior_radius: int

    @classmethod
    def build(cls, schedule: Schedule, grid: float) -> "LatentGrid":
        if not 0.25 <= grid <= 64:
            raise ValueError(f"grid density G must be in 0.25..64 points per standard deviation, got {grid}")
        betas = schedule.betas
        K = len(betas)
        sd_q = np.sqrt(betas)
        sd_tilde_next = np.sqrt(np.concatenate([schedule.posterior_variance[1:], [np.inf]]))
        delta = np.minimum(sd_q, sd_tilde_next) / grid
        q_std = sd_q / delta
        # k = 1: the mean √ᾱ_1·x_0 is in model units; k ≥ 2: √α_k·n_{k−1}·δ_{k−1}/δ_k in grid units.
        gain = np.empty(K)
        gain[0] = math.sqrt(schedule.alphas_cumprod[0]) / delta[0]
        gain[1:] = np.sqrt(1.0 - betas[1:]) * delta[:-1] / delta[1:]
        q_radius = np.ceil(Q_SIGMAS * q_std).astype(np.int64) + 2
        p_nominal = np.concatenate([[1.0], sd_q[1:] / delta[:-1]])  # largest nominal reverse std (β_k)
        p_radius = np.ceil(P_SIGMAS * p_nominal).astype(np.int64) + 2
        prior_std = 1.0 / delta[-1]
        return cls(
            schedule=schedule, grid=float(grid), delta=delta, q_std=q_std, q_gain=gain,
            q_radius=q_radius, p_radius=p_radius, prior_std=prior_std,
            prior_radius=int(math.ceil(P_SIGMAS * prior_std)) + 2,
        )

    @property
    def num_steps(self) -> int:
        return len(self.delta)

    def q_params(self, k: int, cond: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Q(x_k|·) as (centre int64, offset f64, std f64) per element; cond = x_0 (k = 1) or n_{k−1}."""
        mean = snap(self.q_gain[k - 1] * cond)
        centre = np.rint(mean)
        std = np.full(mean.shape, snap(self.q_std[k - 1]))
        return centre.astype(np.int64), mean - centre, std

    def p_params(self, k: int, mean: np.ndarray, logvar: np.ndarray):
        """P(x_{k−1}|x_k) (k ≥ 2) from model-unit mean/log-variance → (centre, offset, std) in units of δ_{k−1}."""
        d = self.delta[k - 2]
        m = snap(mean / d)
        s = snap(np.exp(0.5 * logvar) / d)
        if not (np.isfinite(m).all() and np.isfinite(s).all()):
            raise ValueError("the prior produced non-finite outputs (is the prior file damaged?)")
        centre = np.rint(m)
        return centre.astype(np.int64), m - centre, np.clip(s, MIN_STD, 2.0**16)


def decoder_probs(mean: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """P(x_0|x_1) over the 256 pixel values for each element: [n] mean/log-variance → [n, 256] masses.

    The masses are exp of diffusion.discretized_gaussian_log_likelihood (exact normal CDF, edge bins
    extended to ±∞); mean and log-scale are snapped to 2^-20 first.
    """
    mean = torch.from_numpy(snap(mean).reshape(-1, 1))
    log_scale = torch.from_numpy(snap(0.5 * logvar).reshape(-1, 1))
    if not (torch.isfinite(mean).all() and torch.isfinite(log_scale).all()):
        raise ValueError("the prior produced non-finite outputs (is the prior file damaged?)")
    centres = (torch.arange(256, dtype=torch.float64) / 127.5 - 1.0).view(1, 256)
    out = np.empty((mean.shape[0], 256))
    for i in range(0, mean.shape[0], DECODER_ROWS):
        m, s = mean[i : i + DECODER_ROWS], log_scale[i : i + DECODER_ROWS]
        out[i : i + DECODER_ROWS] = discretized_gaussian_log_likelihood(centres, m, s).exp().numpy()
    return out


def pop_order(k: int, n: int) -> np.ndarray:
    """The element order in which x_k is popped (encoder) and pushed back (decoder): a step-dependent roll.

    ANS pops read the bits the previous push just wrote, so popping in the order P pushed would give
    each element the quantile its own x_{k−2} had under P: the latent trajectories would gain momentum
    and drift off the typical set (measured: +3 to +18 bits/dim per small batch with G = 4). Rolling the
    order by a step-dependent amount hands every element the quantile of another element instead.
    """
    shift = int(n * ((k * 0.6180339887498949) % 1.0))
    return (np.arange(n) + shift) % n


def _pop_bound(n: int) -> int:
    return n * PRECISION_BITS  # no symbol of a leaky model is rarer than 2^-24


def _pop_q(stack: Stack, grid: LatentGrid, k: int, cond: np.ndarray) -> np.ndarray:
    """Encoder: pop n_k ~ Q(x_k|cond) in :func:`pop_order`."""
    centre, offset, std = grid.q_params(k, cond)
    order = pop_order(k, len(cond))
    stack.ensure_bits(_pop_bound(len(cond)))
    n_k = np.empty(len(cond), dtype=np.int64)
    n_k[order] = centre[order] + stack.pop_gaussian(offset[order], std[order], int(grid.q_radius[k - 1]))
    return n_k


def _push_q(stack: Stack, grid: LatentGrid, k: int, cond: np.ndarray, n_k: np.ndarray) -> None:
    """Decoder: push n_k back with Q(x_k|cond), the exact inverse of :func:`_pop_q`."""
    centre, offset, std = grid.q_params(k, cond)
    order = pop_order(k, len(cond))
    stack.push_gaussian((n_k - centre)[order], offset[order], std[order], int(grid.q_radius[k - 1]))


def encode_batch(stack: Stack, grid: LatentGrid, reverse: ReverseFn, images: np.ndarray) -> None:
    """Push a batch of uint8 images [B, C, H, W] onto ``stack`` (Bit-Swap order, see module doc)."""
    pixels = np.asarray(images, dtype=np.int64)
    shape, n = pixels.shape, pixels.size
    K = grid.num_steps
    x0 = pixels.reshape(-1) / 127.5 - 1.0
    # pop x_1 ~ Q(x_1|x_0)
    n_prev = _pop_q(stack, grid, 1, x0)
    # push x_0 with P(x_0|x_1)
    mean, logvar = reverse((n_prev * grid.delta[0]).reshape(shape), 0)
    stack.push_categorical(pixels.reshape(-1), decoder_probs(mean, logvar))
    for k in range(2, K + 1):
        n_k = _pop_q(stack, grid, k, n_prev)
        mean, logvar = reverse((n_k * grid.delta[k - 1]).reshape(shape), k - 1)
        centre, offset, std = grid.p_params(k, mean.reshape(-1), logvar.reshape(-1))
        stack.push_gaussian_escaped(n_prev - centre, offset, std, int(grid.p_radius[k - 1]))
        n_prev = n_k
    zeros = np.zeros(n)
    stack.push_gaussian_escaped(n_prev, zeros, np.full(n, snap(grid.prior_std)), grid.prior_radius)


def decode_batch(stack: Stack, grid: LatentGrid, reverse: ReverseFn, shape: tuple[int, ...]) -> np.ndarray:
    """Pop a batch pushed by :func:`encode_batch` → uint8 images of ``shape`` [B, C, H, W]."""
    n = int(np.prod(shape))
    K = grid.num_steps
    zeros = np.zeros(n)
    n_k = stack.pop_gaussian_escaped(zeros, np.full(n, snap(grid.prior_std)), grid.prior_radius)
    for k in range(K, 1, -1):
        mean, logvar = reverse((n_k * grid.delta[k - 1]).reshape(shape), k - 1)
        centre, offset, std = grid.p_params(k, mean.reshape(-1), logvar.reshape(-1))
        n_prev = centre + stack.pop_gaussian_escaped(offset, std, int(grid.p_radius[k - 1]))
        _push_q(stack, grid, k, n_prev, n_k)
        n_k = n_prev
    mean, logvar = reverse((n_k * grid.delta[0]).reshape(shape), 0)
    pixels = stack.pop_categorical(decoder_probs(mean, logvar))
    _push_q(stack, grid, 1, pixels / 127.5 - 1.0, n_k)
    return pixels.reshape(shape).astype(np.uint8)
