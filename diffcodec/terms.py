"""The per-timestep variational terms L_t: the only producer of them in diffcodec.

For 8-bit images x_0 and a K-step (possibly respaced) schedule, in nats per image (summed over the
D = C·H·W dimensions):

- prior:   L_T = KL(q(x_K|x_0) ‖ N(0, I));
- step k = 1 (column 0): L_0 = −log p_θ(x_0|x_1), the discretized Gaussian decoder (exact CDF);
- step k ≥ 2 (column k−1): L_{k−1} = KL(q(x_{k−1}|x_k, x_0) ‖ p_θ(x_{k−1}|x_k)), x_k ~ q(x_k|x_0);
- total = L_T + Σ_k columns, the variational bound on −log p(x_0).

Every term uses one fresh noise draw, like the reference ``calc_bpd_loop``. Noise for step index j is
drawn as one ``randn([B, C, H, W])`` call per step in increasing j from the caller's generator, so
results do not depend on how steps are chunked into network batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .diffusion import as_pixels, discretized_gaussian_log_likelihood, normal_kl, pixels_to_model, prior_kl, q_sample
from .prior import Prior, Reverse, ScheduleTables
from .schedule import Schedule
from .units import nats_to_bpd


@dataclass
class PairTerms:
    """Terms for N (image, step) pairs."""

    nats: torch.Tensor  # [N] nats: L_0 where k = 0, else L_{k} (KL at step k+1)
    x0_sq_err: torch.Tensor  # [N] Σ over dims of (x̂_0 − x_0)² on the 0–255 scale


@dataclass
class Terms:
    """All terms of a batch of images; bits/dim via the methods (one conversion, units.nats_to_bpd)."""

    prior_nats: torch.Tensor  # [B] nats, L_T
    step_nats: torch.Tensor  # [B, K] nats; column 0 = L_0 (decoder), column k−1 = L_{k−1}
    x0_mse: torch.Tensor  # [B, K] mean squared error of x̂_0(x_k) per dimension, 0–255 scale
    num_dims: int

    @property
    def total_nats(self) -> torch.Tensor:  # [B]
        return self.prior_nats + self.step_nats.sum(dim=1)

    def total_bpd(self) -> torch.Tensor:  # [B]
        return nats_to_bpd(self.total_nats, self.num_dims)


def pair_terms(prior: Prior, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor, schedule: Schedule) -> PairTerms:
    """The term of step k+1 for each pair: x0 [N,C,H,W] float64 in [−1, 1], k [N] long (0-based), noise like x0.

    One network call for all N pairs. Autograd is left as the caller has it.
    """
    tab: ScheduleTables = prior.tables(schedule, x0.device)
    x_t = q_sample(x0, tab.gather("alpha_bar", k, x0), noise)
    rev = prior.reverse(x_t, k, schedule)
    sq_err = ((rev.x0_hat - x0) * 127.5).pow(2).sum(tuple(range(1, x0.dim())))
    return PairTerms(nats=step_nats_from_reverse(x0, x_t, k, rev, tab), x0_sq_err=sq_err)


def step_nats_from_reverse(x0: torch.Tensor, x_t: torch.Tensor, k: torch.Tensor, rev: Reverse, tab: ScheduleTables) -> torch.Tensor:
    """[N] nats: the decoder term −log p(x_0|x_1) where k = 0, else KL(q(x_k|x_{k+1}, x_0) ‖ p_θ) (0-based k).

    Each pair gets only its own kind of term: the exact decoder (two normal CDFs per dimension in
    float64) is evaluated on the k = 0 rows alone, the Gaussian KL on the others.
    """
    dims = tuple(range(1, x0.dim()))
    decoder_rows = (k == 0).nonzero().squeeze(1)
    kl_rows = (k != 0).nonzero().squeeze(1)
    out = x0.new_empty(len(k))
    if len(decoder_rows):
        i = decoder_rows
        out[i] = -discretized_gaussian_log_likelihood(x0[i], rev.mean[i], 0.5 * rev.log_variance[i]).sum(dims)
    if len(kl_rows):
        i, x0i = kl_rows, x0[kl_rows]
        q_mean = tab.gather("c1", k[i], x0i) * x0i + tab.gather("c2", k[i], x0i) * x_t[i]
        q_logvar = tab.gather("log_posterior_var", k[i], x0i)
        out[i] = normal_kl(q_mean, q_logvar.expand_as(x0i), rev.mean[i], rev.log_variance[i]).sum(dims)
    return out


@torch.no_grad()
def compute_terms(
    prior: Prior,
    images,
    schedule: Schedule | None = None,
    generator: torch.Generator | None = None,
    max_batch: int = 256,
) -> Terms:
    """Every term of every image: images [B, C, H, W] uint8 (or integer 0..255) → :class:`Terms`.

    Steps are evaluated in chunks so that each network call sees about ``max_batch`` (image, step)
    pairs. ``generator`` (CPU) supplies the noise; pass a seeded one for reproducible figures.
    """
    schedule = schedule if schedule is not None else prior.base_schedule
    device = next(prior.parameters(), torch.empty(0)).device
    pixels = as_pixels(images, prior.input_shape).to(device)
    D = pixels[0].numel()
    x0 = pixels_to_model(pixels, torch.float64)
    B, K = x0.shape[0], schedule.num_steps
    gen = generator if generator is not None else torch.Generator().manual_seed(0)

    step_nats = torch.empty(B, K, dtype=torch.float64, device=device)
    sq_err = torch.empty(B, K, dtype=torch.float64, device=device)
    chunk = max(1, max_batch // max(B, 1))
    for start in range(0, K, chunk):
        js = list(range(start, min(K, start + chunk)))
        noise = torch.stack([torch.randn(x0.shape, generator=gen, dtype=torch.float64) for _ in js]).to(device)
        k = torch.tensor(js, device=device).repeat_interleave(B)
        out = pair_terms(prior, x0.repeat(len(js), 1, 1, 1), k, noise.flatten(0, 1), schedule)
        step_nats[:, js] = out.nats.view(len(js), B).T
        sq_err[:, js] = out.x0_sq_err.view(len(js), B).T

    prior_nats = prior_kl(x0, float(schedule.alphas_cumprod[-1])).sum(dim=(1, 2, 3))
    return Terms(prior_nats=prior_nats, step_nats=step_nats, x0_mse=sq_err / D, num_dims=D)
