"""What the progressive encoder reports: the state after every step, and how faithful its samples were.

A :class:`StepRecord` describes the file a user gets by stopping after ``n`` reverse steps (its size,
the cumulative KL of the latents sent, the reconstruction error) and the fidelity sums of the step
that produced that state; :func:`fidelity_stats` pools them over steps and images in units of σ_q,
so each step weighs by its information (Σ δ² ≈ 2·KL in nats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class StepRecord:
    """The state after ``n`` reverse steps (x_{K−n} sent; n = K means x_0 itself)."""

    n: int
    timestep: int  # original timestep of the latent just sent (0 for x_0)
    file_bytes: int  # a file stopped here: header, stream, padding and CRC
    stream_bits: int  # the step stream terminated here (and x_0's segment at n = K), bits
    kl_bits: float  # cumulative KL of the steps sent so far, Σ KL(q‖p) (at n = K: + −log2 P(x_0|x_1))
    sq_err: float  # Σ over pixels of (reconstruction − x_0)², 0–255 scale, reconstruction x̂_0(x_{K−n}) rounded to pixels
    chunks: int = 0  # chunks in this step (all tiles)
    candidates: int = 0  # candidates searched in this step (all tiles)
    # fidelity of the sent sample against q (sums over dims, for pooling across images)
    z_sum: float = 0.0
    z_sq_sum: float = 0.0
    slope_num: float = 0.0  # Σ (x − μ_p)(μ_q − μ_p)/σ_q²
    slope_den: float = 0.0  # Σ (μ_q − μ_p)²/σ_q²
    dims: int = 0


@dataclass
class EncodeResult:
    data: bytes
    steps: list[StepRecord]  # n = 0 (x_K) .. stop
    num_dims: int  # C·H·W of the image
    stop: int  # reverse steps in the file (K = lossless)
    total_steps: int  # K
    seconds: float
    network_seconds: float
    search_seconds: float
    exact_from: int | None = None  # an exact file: the step after which x_0 follows (coding.progressive_finish)
    engine: str = "float32"  # the network's engine (engines.coding_engine), recorded in the file

    def to_dict(self) -> dict:
        return {
            "file_bytes": len(self.data),
            "bits_per_dim": 8 * len(self.data) / self.num_dims,
            "stop_step": self.stop,
            "lossless": self.stop == self.total_steps,
            "exact_from_step": self.exact_from,
            "total_steps": self.total_steps,
            "seconds": self.seconds,
            "network_seconds": self.network_seconds,
            "engine": self.engine,
            "search_seconds": self.search_seconds,
            "steps": [{**step_dict(s, self.num_dims), "in_file": self.in_file(s)} for s in self.steps],
        }

    def in_file(self, s: StepRecord) -> bool:
        """Whether a prefix of this file decodes to that state (an exact file: the steps up to ``exact_from``, and x_0).

        The encoder walks past ``exact_from`` to find the cheapest exact end; those later states are what
        a lossy file stopped there (--psnr/--bytes) would show, not prefixes of this one."""
        last = self.stop if self.exact_from is None else self.exact_from
        return s.n <= last or s.n == self.total_steps == self.stop

    def fidelity(self) -> dict:
        """The sent samples against q, pooled over steps in units of σ_q (each step weighted by its information)."""
        return fidelity_stats(self.steps)


def fidelity_stats(steps) -> dict:
    """slope of (x − μ_p) on (μ_q − μ_p), and mean and variance of z = (x − μ_q)/σ_q, pooled over ``steps``."""
    dims = sum(s.dims for s in steps)
    den = sum(s.slope_den for s in steps)
    if not dims or den <= 0:
        return {"fidelity_slope": None, "fidelity_z_mean": None, "fidelity_z_var": None}
    mean = sum(s.z_sum for s in steps) / dims
    return {"fidelity_slope": sum(s.slope_num for s in steps) / den, "fidelity_z_mean": mean,
            "fidelity_z_var": sum(s.z_sq_sum for s in steps) / dims - mean * mean}


def step_dict(s: StepRecord, num_dims: int) -> dict:
    mse = s.sq_err / num_dims
    return {
        "n": s.n,
        "t": s.timestep,
        "file_bytes": s.file_bytes,
        "bits_per_dim": 8 * s.file_bytes / num_dims,
        "stream_bits": s.stream_bits,
        "kl_bits": s.kl_bits,
        "rmse": math.sqrt(mse),
        "psnr": psnr(mse) if mse > 0 else None,  # None: exact (JSON has no infinity)
        "chunks": s.chunks,
        "candidates": s.candidates,
        "slope": s.slope_num / s.slope_den if s.slope_den > 0 else None,
        "z_mean": s.z_sum / s.dims if s.dims else None,
        "z_var": s.z_sq_sum / s.dims - (s.z_sum / s.dims) ** 2 if s.dims else None,
    }


def psnr(mse: float) -> float:
    return math.inf if mse <= 0 else 10.0 * math.log10(255.0**2 / mse)


@dataclass
class StepStats:
    """Sums over one step's chunks while it is coded (stored into the StepRecord of the state it produces)."""

    kl: float = 0.0
    chunks: int = 0
    candidates: int = 0
    z_sum: float = 0.0
    z_sq_sum: float = 0.0
    slope_num: float = 0.0
    slope_den: float = 0.0
    dims: int = 0

    def add(self, xs, mq, sd_q, mp, kl, searched):
        """In units of σ_q, so that pooling over steps weights each by its information (Σ δ² ≈ 2·KL)."""
        z = (xs - mq) / sd_q
        dq = (mq - mp) / sd_q
        self.kl += kl
        self.candidates += searched
        self.z_sum += float(z.sum())
        self.z_sq_sum += float((z * z).sum())
        self.slope_num += float(((xs - mp) / sd_q * dq).sum())
        self.slope_den += float((dq * dq).sum())
        self.dims += xs.numel()

    def store(self, rec: StepRecord):
        rec.chunks, rec.candidates = self.chunks, self.candidates
        rec.z_sum, rec.z_sq_sum, rec.slope_num, rec.slope_den, rec.dims = (
            self.z_sum, self.z_sq_sum, self.slope_num, self.slope_den, self.dims)
