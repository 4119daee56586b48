"""Noise schedules and respacing (DDPM, Ho et al. 2020; Improved DDPM, Nichol & Dhariwal 2021).

Everything here is float64 NumPy; consumers cast when they index. Paper indexing: step k = 1..K of
the (possibly respaced) chain sits at original timestep ``timesteps[k-1]`` in 1..T, and array
position ``k-1`` holds that step's β'_k, ᾱ_k, etc.

Worked example of respacing: T = 10, kept steps S = (1, 2, 5, 10). Then
ᾱ'_1 = ᾱ_1, ᾱ'_2 = ᾱ_2, ᾱ'_3 = ᾱ_5, ᾱ'_4 = ᾱ_10, and β'_k = 1 − ᾱ_{S_k}/ᾱ_{S_{k−1}}
(with ᾱ_{S_0} = 1), so the marginals q(x_k|x_0) of the short chain equal those of the long chain at
the kept steps; the network is called with the original timestep S_k.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np


class ScheduleKind(str, enum.Enum):
    LINEAR = "linear"
    COSINE = "cosine"


class Spacing(str, enum.Enum):
    EVEN = "even"  # K steps evenly strided over 1..T
    FRONT = "front"  # every one of the first steps, then strided (keeps the bound tight at small t)


def linear_betas(T: int) -> np.ndarray:
    """DDPM linear β_t from 1e-4 to 0.02 at T = 1000; both ends scaled by 1000/T otherwise. [T] f64."""
    scale = 1000.0 / T
    return np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)


def range_betas(start: float, end: float, T: int, sqrt: bool = False) -> np.ndarray:
    """β_t linear in t from ``start`` to ``end`` ([T] f64, no rescaling with T); with ``sqrt``, √β is
    linear instead (diffusers' "scaled_linear", from latent diffusion)."""
    if sqrt:
        return np.linspace(math.sqrt(start), math.sqrt(end), T, dtype=np.float64) ** 2
    return np.linspace(start, end, T, dtype=np.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Improved-DDPM cosine schedule: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2). [T] f64."""

    def f(t: np.ndarray) -> np.ndarray:
        return np.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    t = np.arange(T + 1, dtype=np.float64)
    alpha_bar = f(t) / f(np.zeros(1))
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return np.minimum(betas, max_beta)


@dataclass(frozen=True)
class Schedule:
    """A K-step forward chain. All arrays are [K] float64 except ``timesteps`` ([K] int64, 1..T)."""

    betas: np.ndarray
    timesteps: np.ndarray
    T: int  # length of the original schedule the network was trained on

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)

    @property
    def alphas_cumprod_prev(self) -> np.ndarray:
        return np.concatenate([[1.0], self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> np.ndarray:
        """β̃_k = β_k (1 − ᾱ_{k−1})/(1 − ᾱ_k); β̃_1 = 0."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> np.ndarray:
        """log β̃_k with the k = 1 entry (log 0) replaced by log β̃_2, as the reference code does."""
        var = self.posterior_variance
        if len(var) == 1:
            return np.log(self.betas)
        return np.log(np.concatenate([[var[1]], var[1:]]))

    @property
    def large_log_variance(self) -> np.ndarray:
        """log β_k, with the k = 1 entry replaced by log β̃_2 (DDPM's "fixedlarge")."""
        if len(self.betas) == 1:
            return np.log(self.betas)
        return np.log(np.concatenate([[self.posterior_variance[1]], self.betas[1:]]))

    @property
    def posterior_mean_coefs(self) -> tuple[np.ndarray, np.ndarray]:
        """(c1, c2) with μ̃ = c1·x_0 + c2·x_k."""
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        c1 = self.betas * np.sqrt(abar_prev) / (1.0 - abar)
        c2 = (1.0 - abar_prev) * np.sqrt(1.0 - self.betas) / (1.0 - abar)
        return c1, c2


def make_schedule(kind: ScheduleKind | str, T: int) -> Schedule:
    if T < 1:
        raise ValueError(f"schedule length T must be >= 1, got {T}")
    kind = ScheduleKind(kind)
    return schedule_from_betas(linear_betas(T) if kind is ScheduleKind.LINEAR else cosine_betas(T))


def schedule_from_betas(betas: np.ndarray) -> Schedule:
    """The full T-step chain of ``betas`` ([T] float64; the caller checks their range), at timesteps 1..T."""
    betas = np.asarray(betas, dtype=np.float64)
    T = len(betas)
    return Schedule(betas=betas, timesteps=np.arange(1, T + 1, dtype=np.int64), T=T)


def spaced_timesteps(T: int, K: int, spacing: Spacing | str = Spacing.EVEN, front: int | None = None) -> np.ndarray:
    """Choose K original timesteps 1 = S_1 < … < S_K ≤ T (always including t = 1 and t = T).

    EVEN: round(linspace(1, T, K)). FRONT: keep every one of the first ``front`` steps (default
    K // 2) and stride the remaining K − front steps evenly over (front, T].

    >>> spaced_timesteps(1000, 4).tolist()
    [1, 334, 667, 1000]
    >>> spaced_timesteps(1000, 6, "front", front=3).tolist()
    [1, 2, 3, 335, 668, 1000]
    """
    spacing = Spacing(spacing)
    if not 1 <= K <= T:
        raise ValueError(f"number of steps must be in 1..{T} (the prior's schedule length), got {K}")
    if K == T:
        return np.arange(1, T + 1, dtype=np.int64)
    if K == 1:
        return np.array([1], dtype=np.int64)
    if spacing is Spacing.EVEN:
        steps = np.round(np.linspace(1, T, K)).astype(np.int64)
    else:
        m = K // 2 if front is None else front
        if not 1 <= m < K:
            raise ValueError(f"front must be in 1..{K - 1}, got {m}")
        rest = np.round(np.linspace(m, T, K - m + 1)[1:]).astype(np.int64)
        steps = np.concatenate([np.arange(1, m + 1), rest])
    assert len(np.unique(steps)) == K and steps[0] == 1 and steps[-1] == T
    return steps


def respace(base: Schedule, timesteps: np.ndarray) -> Schedule:
    """The chain that visits only ``timesteps`` (subset of base.timesteps, increasing, starting at the first)."""
    timesteps = np.asarray(timesteps, dtype=np.int64)
    index = np.searchsorted(base.timesteps, timesteps)
    if (
        len(timesteps) == 0
        or np.any(index >= len(base.timesteps))
        or np.any(base.timesteps[np.minimum(index, len(base.timesteps) - 1)] != timesteps)
        or np.any(np.diff(timesteps) <= 0)
        or timesteps[0] != base.timesteps[0]
    ):
        raise ValueError("respaced timesteps must be an increasing subset of the schedule starting at its first step")
    abar = base.alphas_cumprod[index]
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    return Schedule(betas=1.0 - abar / abar_prev, timesteps=timesteps, T=base.T)
