"""The ideal progressive curve of a prior: rate = cumulative KL, distortion of x̂_0 from true samples.

For image i and step k of the K-step chain (original timestep S_k), DDPM Figure 5 / SPEC §2:

    rate_i(S_k)  = L_T + Σ_{j>k} term_j        bits/dim: what sending x_K … x_k costs at the ideal
                                               (reverse channel coding at exactly the KL),
    mse_i(S_k)   = mean over pixels of (x̂_0(x_k) − x_0)² on the 0–255 scale, x_k ~ q(x_k|x_0),
    psnr_i(S_k)  = 10 log10(255² / mse_i(S_k)).

Both come from :func:`diffcodec.terms.compute_terms` (``x0_mse`` is per image; one fresh noise draw
per term, so the x_k behind the rate and behind the distortion are independent draws of the same
marginal). The summary averages over images: mean rate, **mean of per-image PSNR** (what the
classic-codec curves report), the pooled RMSE √(mean MSE) of ``diffcodec nll``, and the mean
per-image RMSE. x̂_0 is the network's continuous estimate (clipped to [−1, 1]), not rounded to 8-bit
pixels; rounding would add at most 1/12 to each MSE (< 0.06 dB at 40 dB).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from diffcodec.terms import compute_terms
from diffcodec.units import nats_to_bpd

PSNR_PEAK = 255.0
CHUNK = 32  # images per compute_terms call (one seeded generator runs through the chunks in order)
PAIRS_PER_CALL = 64  # (image, step) pairs per network call: small calls suit CPU caches


def psnr_from_mse(mse):
    """dB on the 0–255 scale; +inf where mse == 0."""
    mse = np.asarray(mse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(PSNR_PEAK**2 / mse)


@dataclass
class IdealRD:
    timesteps: np.ndarray  # [K] int64, original timesteps S_1 < … < S_K
    rate_bpd: np.ndarray  # [N, K] bits/dim, rate_i(S_k) (excludes step k's own term)
    mse: np.ndarray  # [N, K] x̂_0(x_k) mean squared error per pixel, 0–255 scale
    total_bpd: np.ndarray  # [N] bits/dim, each image's VLB (one noise draw per term)
    term_bpd: np.ndarray  # [N, K] bits/dim, column 0 = decoder L_0, column k = L_k (KL)

    def summary(self) -> dict:
        """Per step, noisiest first (the order of ``diffcodec nll --json``)."""
        psnr = psnr_from_mse(self.mse)
        n = len(self.rate_bpd)
        steps = []
        for k in range(len(self.timesteps) - 1, -1, -1):
            steps.append(
                {
                    "t": int(self.timesteps[k]),
                    "term_bpd": float(self.term_bpd[:, k].mean()),
                    "cum_rate_bpd": float(self.rate_bpd[:, k].mean()),
                    "psnr_mean": float(psnr[:, k].mean()),
                    "psnr_stderr": float(psnr[:, k].std(ddof=1) / np.sqrt(n)) if n > 1 else None,
                    "rmse_pooled": float(np.sqrt(self.mse[:, k].mean())),
                    "rmse_mean": float(np.sqrt(self.mse[:, k]).mean()),
                }
            )
        return {
            "num_images": n,
            "num_steps": len(self.timesteps),
            "total_bpd": float(self.total_bpd.mean()),
            "total_bpd_stderr": float(self.total_bpd.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
            "decoder_bpd": float(self.term_bpd[:, 0].mean()),
            "steps": steps,
        }


def ideal_rd(prior, images: np.ndarray, schedule, seed: int = 0, chunk: int = CHUNK, progress=None) -> IdealRD:
    """Per-image ideal rate and x̂_0 distortion at every step of ``schedule``.

    images: [N, C, H, W] uint8. K network evaluations per image, in chunks of ``chunk`` images
    (``progress(done, total)`` is called after each). Deterministic for fixed seed and chunk.
    """
    gen = torch.Generator().manual_seed(seed)
    D = prior.num_dims
    rates, mses, totals, terms = [], [], [], []
    for start in range(0, len(images), chunk):
        t = compute_terms(prior, torch.from_numpy(images[start : start + chunk]), schedule, gen, max_batch=PAIRS_PER_CALL)
        step_bpd = nats_to_bpd(t.step_nats, D).cpu().numpy()  # [B, K]
        prior_bpd = nats_to_bpd(t.prior_nats, D).cpu().numpy()  # [B]
        after = np.concatenate([np.cumsum(step_bpd[:, ::-1], axis=1)[:, ::-1][:, 1:], np.zeros((len(step_bpd), 1))], axis=1)
        rates.append(prior_bpd[:, None] + after)
        mses.append(t.x0_mse.cpu().numpy())
        totals.append(nats_to_bpd(t.total_nats, D).cpu().numpy())
        terms.append(step_bpd)
        if progress is not None:
            progress(min(start + chunk, len(images)), len(images))
    return IdealRD(
        timesteps=np.asarray(schedule.timesteps, dtype=np.int64),
        rate_bpd=np.concatenate(rates),
        mse=np.concatenate(mses),
        total_bpd=np.concatenate(totals),
        term_bpd=np.concatenate(terms),
    )


def run(prior, images: np.ndarray, steps: int, spacing: str, seed: int = 0, log=print) -> dict:
    """The ideal stage's JSON body (without provenance) on ``prior.schedule(steps, spacing)``:
    :meth:`IdealRD.summary` plus run details."""
    schedule = prior.schedule(steps, spacing)
    t0 = time.time()
    rd = ideal_rd(prior, images, schedule, seed, progress=lambda d, n: log(f"  ideal: {d}/{n} images ({time.time() - t0:.0f} s)"))
    out = rd.summary()
    out.update(
        {
            "spacing": str(getattr(spacing, "value", spacing)),
            "seed": seed,
            "chunk": CHUNK,
            "pairs_per_call": PAIRS_PER_CALL,
            "seconds": time.time() - t0,
            "note": "rate: mean over images of L_T + sum of the terms after step t (bits/dim); psnr_mean: mean of "
            "per-image PSNR of x0_hat(x_t), x_t ~ q(x_t|x_0); rmse_pooled: sqrt of the mean MSE over all pixels "
            "(the `diffcodec nll` figure); x0_hat continuous (not rounded to 8 bits)",
        }
    )
    return out


def stage(ctx) -> dict:
    """``ideal_rd.json``: the ideal curve on ctx's images at the codecs' steps (reused when cached)."""
    match = {"prior_digest": ctx.prior.digest, "data": ctx.data, "num_images": ctx.num, "num_steps": ctx.chain_steps, "spacing": ctx.spacing}
    found = ctx.cached("ideal_rd", **match)
    if found is not None:
        return found
    ctx.log(f"ideal curve: {ctx.num} images x {ctx.chain_steps} steps of network evaluations")
    return ctx.write("ideal_rd", run(ctx.prior, ctx.images, ctx.chain_steps, ctx.spacing, log=ctx.log))
