"""What the progressive encoder and decoder share: the visited chain, the step side information, chunks.

Both sides hold the same latents x_k of every tile (bit-identical) and everything derived from them
here; nothing in this module sees x_0. Per visited state x_k (nominal step k of the K-step schedule):

1. one network call on every tile gives ε̂ and v (``Chain.network``);
2. the jump m (how many nominal steps the next transmission covers) follows from the previous
   step's side information (``Chain.next_jump``): the noisiest steps carry about one bit each, so
   they are merged until a transmission carries about ``merge_bits``. A merged step k → k − m is the
   respaced transition of DDPM (ᾱ exact at both ends, β' = 1 − ᾱ_{k−m}/ᾱ_k), built from the same
   network output, so merging costs no network pass;
3. per tile the encoder sends the step's KL quantized to whole octaves, level λ = round(log2 KL),
   as the difference to the level predicted from that tile's previous one, arithmetic-coded under
   :class:`LevelModel` (adaptive counts started from a two-sided geometric). Whole octaves: half
   octaves cost about a bit more per step and tile than their sharper chunk counts save (24 images:
   2 % more bits at 35–40 dB), two octaves cut chunks too coarsely. From 2^λ both sides derive the chunk count
   n = max(1, ⌈KL/κ⌉) (κ caps a chunk's KL, and with it the search: 2^(κ + margin) candidates) and each chunk's index model (coding.rcc.OctaveModel);
4. the chunks: a seeded permutation of the dimensions cut at equal shares of each dimension's
   expected KL ê_j = max(½ log(σ_p,j²/σ_q²), 1e-4), so chunks carry similar KL (the learned variance
   says where the prior is unsure).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..prior import Prior
from ..schedule import Schedule
from .arith import FrequencyTable
from .bitsback import snap
from .rcc import OctaveModel, seed_of

LEVELS_PER_OCTAVE = 1
LEVEL_MIN, LEVEL_MAX = -6, 30  # KL from 2^-6 to 2^30 bits
LEVEL_START = -1  # the level a tile's first step is coded against
LEVEL_RATIO = 0.4  # P(δ) ∝ 0.4^|δ|
MAX_JUMP = 8
MIN_EXPECTED_NATS = 1e-4


LEVEL_SPAN = LEVEL_MAX - LEVEL_MIN


SKIP = 2 * LEVEL_SPAN + 1  # the level symbol that says "nothing sent: draw this step from p"


class LevelModel:
    """Adaptive frequencies of the level change δ ∈ [−span, span] (symbol δ + span) and of SKIP, shared by all tiles."""

    STEP = 24  # added to an observed symbol's count
    LIMIT = 60_000  # counts are halved (rounding up) before their total passes 2^16

    def __init__(self):
        deltas = np.arange(-LEVEL_SPAN, LEVEL_SPAN + 1)
        counts = np.maximum(np.round(64 * LEVEL_RATIO ** np.abs(deltas)), 1).astype(np.int64)
        self.counts = np.concatenate([counts, [16]])

    def table(self) -> FrequencyTable:
        return FrequencyTable(self.counts)

    def update(self, symbol: int) -> None:
        self.counts[symbol] += self.STEP
        if self.counts.sum() > self.LIMIT:
            self.counts = (self.counts + 1) // 2


def kl_level(kl_bits: float) -> int:
    return int(min(max(round(LEVELS_PER_OCTAVE * math.log2(max(kl_bits, 2.0**-8))), LEVEL_MIN), LEVEL_MAX))


def level_bits(level: int) -> float:
    return 2.0 ** (level / LEVELS_PER_OCTAVE)


class Chain:
    """The visited chain of a batch of tiles [B, C, t, t] under a K-step schedule, shared by both sides."""

    def __init__(self, prior: Prior, schedule: Schedule, tiles_shape, chunk_bits: float, merge_bits: float,
                 max_batch: int, device):
        self.prior, self.schedule, self.device = prior, schedule, device
        self.shape = tuple(tiles_shape)
        self.num_tiles = self.shape[0]
        self.dims = int(np.prod(self.shape[1:]))
        self.chunk_bits, self.merge_bits, self.max_batch = chunk_bits, merge_bits, max_batch
        self.levels = [LEVEL_START] * self.num_tiles
        self.expected = [None] * self.num_tiles  # Σ ê of each tile's previous step, bits
        self.octaves = OctaveModel()
        self.level_model = LevelModel()
        self.network_seconds = 0.0
        self._pairs: dict[tuple[int, int], Schedule] = {}
        self._perms: dict[int, torch.Tensor] = {}

    # -- the network ------------------------------------------------------------------------
    @torch.no_grad()
    def network(self, x: torch.Tensor, k: int):
        """ε̂ and v (or None) at nominal step k (1..K) for every tile, float64 [B, C, t, t], plus x̂_0."""
        t0 = time.perf_counter()
        eps, vs = [], []
        tstep = torch.tensor(float(self.schedule.timesteps[k - 1]))
        for s in range(0, self.num_tiles, self.max_batch):
            xb = x[s : s + self.max_batch].to(self.device)
            e, v = self.prior.network(xb, tstep.expand(xb.shape[0]).to(self.device))
            eps.append(e.cpu().double())
            vs.append(None if v is None else v.cpu().double())
        eps = torch.cat(eps)
        v = None if vs[0] is None else torch.cat(vs)
        kk = torch.full((self.num_tiles,), k - 1, dtype=torch.long)
        x0_hat = self.prior.reverse_from_output(x, kk, self.schedule, eps, v).x0_hat
        self.network_seconds += time.perf_counter() - t0
        return eps, v, x0_hat

    def pair(self, k: int, m: int) -> Schedule:
        """The 2-step schedule whose second step is the transition nominal k → k − m (k − m ≥ 1)."""
        key = (k, m)
        if key not in self._pairs:
            abar = self.schedule.alphas_cumprod
            a_hi, a_lo = abar[k - 1], abar[k - m - 1]
            self._pairs[key] = Schedule(betas=np.array([1.0 - a_lo, 1.0 - a_hi / a_lo]),
                                        timesteps=self.schedule.timesteps[[k - m - 1, k - 1]], T=self.schedule.T)
        return self._pairs[key]

    def reverse(self, x: torch.Tensor, eps, v, k: int, m: int):
        """p(x_{k−m}|x_k) for every tile: snapped mean and std [B, D] float64 (m = k means the decoder P(x_0|x_1))."""
        if m == k:  # k = 1 → x_0: the base schedule's first step
            sched, idx = self.schedule, 0
        else:
            sched, idx = self.pair(k, m), 1
        kk = torch.full((self.num_tiles,), idx, dtype=torch.long)
        rev = self.prior.reverse_from_output(x, kk, sched, eps, v)
        mean, logvar = rev.mean.flatten(1), rev.log_variance.flatten(1)
        if not (torch.isfinite(mean).all() and torch.isfinite(logvar).all()):
            raise ValueError("the prior produced non-finite outputs (is the prior file damaged?)")
        std = torch.from_numpy(snap(torch.exp(0.5 * logvar).numpy())).clamp(min=2.0**-20)
        return torch.from_numpy(snap(mean.numpy())), std

    def posterior(self, k: int, m: int) -> tuple[float, float, float]:
        """q(x_{k−m}|x_k, x_0) = N(c1·x_0 + c2·x_k, σ²) → (c1, c2, σ)."""
        sched = self.pair(k, m)
        c1, c2 = sched.posterior_mean_coefs
        return float(c1[1]), float(c2[1]), math.sqrt(float(sched.posterior_variance[1]))

    # -- side information and chunks -------------------------------------------------------
    def next_jump(self, k: int, last_jump: int | None) -> int:
        """Nominal steps the next transmission from x_k covers (both sides, from the levels sent so far)."""
        if k <= 1:
            return 1
        if last_jump is None:
            m = 1
        else:  # the KL per nominal step grows as t falls, so at most double the last jump
            per_step = float(np.mean([level_bits(lv) for lv in self.levels])) / last_jump
            m = min(int(self.merge_bits / max(per_step, 1e-6)), 2 * last_jump)
        return int(min(max(m, 1), MAX_JUMP, k - 1))

    def expected_bits(self, std_p: torch.Tensor, sd_q: float) -> float:
        """Σ_j ê_j of one tile in bits: what the prior's own uncertainty says the step should cost."""
        return float(torch.log(std_p / sd_q).clamp(min=MIN_EXPECTED_NATS).sum()) / math.log(2.0)

    def predicted_level(self, tile: int, expected: float) -> int:
        """The tile's previous level moved by the change in Σ ê since its previous step (both sides)."""
        prev = self.expected[tile]
        if prev is None:
            return LEVEL_START
        shift = LEVELS_PER_OCTAVE * math.log2(max(expected, 1e-9) / max(prev, 1e-9))
        return int(min(max(self.levels[tile] + round(shift), LEVEL_MIN), LEVEL_MAX))

    def chunks(self, tile: int, k: int, level: int, std_p: torch.Tensor, sd_q: float) -> list[tuple[torch.Tensor, float]]:
        """Tile's chunks for the step from x_k: [(dims [d] long, the index code's KL in bits)]."""
        kl = level_bits(level)
        n = int(min(max(math.ceil(kl / self.chunk_bits), 1), self.dims))
        if n == 1:
            return [(torch.arange(self.dims), kl)]
        e = (torch.log(std_p / sd_q)).clamp(min=MIN_EXPECTED_NATS)  # ½ log(σ_p²/σ_q²)
        perm = self._perms.get(k)
        if perm is None:
            perm = self._perms[k] = torch.randperm(self.dims, generator=torch.Generator().manual_seed(seed_of(0x9E37, k)))
        e_perm = e[perm]
        before = torch.cumsum(e_perm, 0) - e_perm
        ids = torch.clamp((before * (n / float(e_perm.sum()))).floor().long(), 0, n - 1)
        out = []
        for c in range(n):
            dims = perm[ids == c]
            if len(dims):
                out.append((dims, kl / n))
        return out
