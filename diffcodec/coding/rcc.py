"""Reverse channel coding of diagonal Gaussians: send a sample of q at about KL(q‖p) bits.

The encoder knows q = N(μ_q, σ_q² I) and p = N(μ_p, diag σ_p²); the decoder knows only p. Both
regenerate the same candidates from p with seeded generators, and the encoder sends the index of
one candidate. The selection is the Poisson functional representation (Li & El Gamal 2018):
candidates x_i = μ_p + σ_p ⊙ ε_i with ε_i ~ N(0, I) from shared randomness, arrival times
T_i = E_1 + … + E_i with E_j ~ Exp(1) private to the encoder, and

    i* = argmax_i  log w_i − log T_i,        w_i = q(x_i)/p(x_i).

Searched over all i, x_{i*} is an exact sample of q and i* costs about KL + log(KL + 1) + O(1) bits.
The search here stops after N = 2^(KL + margin) candidates (the encoder knows the KL; the decoder
does not need N), so the sample is biased towards p by an amount that falls as the margin grows;
the codec measures and reports it (see bench/progressive.py). For Gaussians,
log w(ε) = Σ_j a_j ε_j² + b_j ε_j + c with

    a_j = ½(1 − σ_p,j²/σ_q²),   b_j = σ_p,j (μ_q,j − μ_p,j)/σ_q²    (:func:`log_weight_coefs`),

so one candidate costs two multiply-adds per dimension after its draw.

Candidates in two parts. Drawing float32 normals was most of the encoder's time, so a candidate is
drawn as one random byte per dimension, its quantile code c: the bin ε ∈ [Φ⁻¹(c/256), Φ⁻¹((c+1)/256))
of N(0, 1), each bin of probability 1/256. The search scores a candidate at its bins' conditional
means m_c = E[ε | c] (a table lookup and two multiply-adds per dimension). Only the winner is completed
inside its bins: ε = Φ⁻¹((c + u)/256) with u ~ U(0, 1) from a second seeded stream, an exact draw
of N(0, 1) restricted to the bin. So every candidate is an exact draw of p; only the weight is
coarse. The chosen bins follow q's tilt evaluated at m_c instead of at ε, and the mean shift towards
q shrinks by Var(m_c) = 1 − 7.4·10⁻⁴ (a slope factor of 0.9993, far below the truncation bias).
Drawing and scoring a byte per dimension runs 2–5× faster than a float32 normal per dimension.

Shared randomness (coding.candidates): the codes of candidate i of a chunk are bytes of a
counter-based generator (splitmix64 words at counters (i − 1)·⌈d/8⌉ …) seeded by the chunk, so the
decoder regenerates candidate i* alone, on any device. The encoder's search is one fused pass per
candidate (draw, table look-up, two multiply-adds, arrival time) compiled by numba on the CPU, about
0.3–0.5 ns per candidate and dimension, 4× the torch search it replaced; a torch search over blocks
of candidates runs on CUDA (or without numba). The winner's completion runs on the CPU in float64
(scipy's ndtri).

Index code: i* ≥ 1 falls in octave o = ⌊log2 i*⌋; o is arithmetic-coded (coding.arith) under
:class:`OctaveModel` (a Gaussian around the chunk's KL κ, known to the decoder, whose
offset and spread adapt to the octaves sent so far), then the o low bits of i* raw. (A Zipf model,
s = 1 + 1/(κ + 0.9) as in diffc, spreads mass over every octave and cost 0.6 bit more per chunk on
Fashion-MNIST chunks.) Round trip (a test executes this)::

    >>> import torch
    >>> from diffcodec.coding.arith import ArithmeticDecoder, ArithmeticEncoder
    >>> mu_p, sd_p = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    >>> mu_q = torch.full((6,), 0.8, dtype=torch.float64)
    >>> a, b = log_weight_coefs(mu_q, 0.9, mu_p, sd_p)
    >>> pick = select(a, b, seed=7, kl_bits=kl_bits(mu_q, 0.9, mu_p, sd_p), margin=4, private=1)
    >>> enc = ArithmeticEncoder(); write_index(enc, OctaveModel().table(2.0), pick.index)
    >>> data, _ = enc.terminated(enc.snapshot())
    >>> index = read_index(ArithmeticDecoder(data, complete=True), OctaveModel().table(2.0))
    >>> bool(torch.equal(candidate(7, index, 6), pick.eps))
    True
    >>> pick.eps.dtype, bool(torch.equal(quantile_codes(pick.eps), torch.from_numpy(codes(7, index, 6))))
    (torch.float64, True)
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import ndtr, ndtri

from . import candidates as cands
from .arith import ArithmeticDecoder, ArithmeticEncoder, FrequencyTable
from .candidates import codes

MAX_OCTAVES = 40  # indices up to 2^40 − 1 are codable (the encoder never searches that far)


def seed_of(*parts: int) -> int:
    """A 63-bit seed from integers (BLAKE2b): the same on every machine."""
    h = hashlib.blake2b(np.asarray(parts, dtype="<i8").tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def log_weight_coefs(mu_q: torch.Tensor, sigma_q: float, mu_p: torch.Tensor, sigma_p: torch.Tensor):
    """(a, b) [d] float64 with log q(x)/p(x) = Σ a ε² + b ε + const at x = μ_p + σ_p ε.

    log q(x) = −(x − μ_q)²/(2σ_q²) + …, log p(x) = −ε²/2 + …, and x − μ_q = σ_p ε − Δ with Δ = μ_q − μ_p:
    −(σ_p² ε² − 2σ_p Δ ε)/(2σ_q²) + ε²/2 = ½(1 − σ_p²/σ_q²) ε² + (σ_p Δ/σ_q²) ε.
    """
    var_q = sigma_q**2
    a = 0.5 * (1.0 - sigma_p**2 / var_q)
    b = sigma_p * (mu_q - mu_p) / var_q
    return a, b


def kl_nats_per_dim(mu_q: torch.Tensor, sigma_q: float, mu_p: torch.Tensor, sigma_p: torch.Tensor) -> torch.Tensor:
    """KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) per dimension, nats (float64)."""
    r = sigma_q**2 / sigma_p**2
    return 0.5 * (r - 1.0 - torch.log(r) + (mu_q - mu_p) ** 2 / sigma_p**2)


def kl_bits(mu_q, sigma_q, mu_p, sigma_p) -> float:
    return float(kl_nats_per_dim(mu_q, sigma_q, mu_p, sigma_p).sum()) / math.log(2.0)


QUANTILE_BITS = 8
BINS = 1 << QUANTILE_BITS
_EDGES = ndtri(np.arange(BINS + 1) / BINS)  # bin c of N(0, 1) is [_EDGES[c], _EDGES[c + 1])
BIN_MEANS = (np.exp(-0.5 * _EDGES[:-1] ** 2) - np.exp(-0.5 * _EDGES[1:] ** 2)) * BINS / math.sqrt(2 * math.pi)  # E[ε | c]
_MEANS32 = torch.tensor(BIN_MEANS, dtype=torch.float32)
_UNIFORM_BITS = 44  # c + u keeps every bit of u in a float64


def quantile_codes(eps: torch.Tensor) -> torch.Tensor:
    """The bin of each ε: ⌊256·Φ(ε)⌋, [d] uint8 (tests use it to check a completion stays in its bins)."""
    return torch.from_numpy(np.searchsorted(_EDGES, eps.numpy(), side="right") - 1).to(torch.uint8)


def candidate(seed: int, index: int, d: int) -> torch.Tensor:
    """ε of candidate ``index`` (1-based) of the chunk seeded ``seed``: [d] float64 on the CPU.

    Its codes c (coding.candidates.codes), completed inside their bins: ε = Φ⁻¹((c + u)/256),
    u = (r + ½)/2^44 with r uniform on [0, 2^44) from a generator seeded by (seed, index), so ε is
    N(0, 1) restricted to bin c.
    """
    c = torch.from_numpy(codes(seed, index, d)).double()
    gen = torch.Generator().manual_seed(seed_of(seed, 0xC0DE, index))
    r = torch.randint(0, 1 << _UNIFORM_BITS, (d,), generator=gen, dtype=torch.int64).double()
    u = (r + 0.5) / float(1 << _UNIFORM_BITS)
    return torch.from_numpy(ndtri(((c + u) / BINS).numpy()))


@dataclass
class Selection:
    index: int  # 1-based
    eps: torch.Tensor  # [d] float64 on the CPU, the chosen candidate's noise (:func:`candidate`)
    searched: int  # candidates drawn and scored (the search stops early once none can win)


def search_size(kl: float, margin: float, max_bits: int) -> int:
    """N = 2^(KL + margin) candidates, at least 1, at most 2^max_bits."""
    return math.ceil(2.0 ** min(max(kl + margin, 0.0), max_bits))


@torch.no_grad()
def select(a: torch.Tensor, b: torch.Tensor, seed: int, kl_bits: float, margin: float, private: int,
           max_bits: int = 20, workers: int = 1) -> Selection:
    """Truncated PFR over N = search_size(…) candidates of one chunk ([d] coefficients, on the device
    that searches), arrival times from the ``private`` seed: the first best, whatever ``workers``.

    On the CPU with numba, the fused kernel on ``workers`` threads (coding.candidates.search_cpu);
    otherwise torch blocks on ``a``'s device (search_torch; its float32 sums run in another order, so
    a near tie may pick another, equally valid, candidate).
    """
    n = search_size(kl_bits, margin, max_bits)
    ceiling = weight_ceiling(a, b)
    a32, b32 = a.float(), b.float()
    if a.device.type == "cpu" and cands.numba_available():
        index, searched = cands.search_cpu(a32.numpy(), b32.numpy(), _MEANS32.numpy(), seed, private, n, ceiling,
                                           workers)
    else:
        index, searched = cands.search_torch(a32, b32, _MEANS32, seed, private, n, ceiling)
    return Selection(index=index, eps=candidate(seed, index, a.numel()), searched=searched)


def weight_ceiling(a: torch.Tensor, b: torch.Tensor) -> float:
    """sup over ε of Σ a ε² + b ε (the search's log w up to a constant): Σ −b²/(4a) when every a < 0, else ∞.

    a < 0 wherever σ_q < σ_p, which holds for reverse variances at least β̃; PFR may stop once a
    candidate's log arrival time exceeds this ceiling minus the best score so far (Li & El Gamal)."""
    if not bool((a < 0).all()):
        return math.inf
    return float((-b * b / (4.0 * a)).sum())


def write_index(enc: ArithmeticEncoder, table: FrequencyTable, index: int) -> None:
    """Candidate index i ≥ 1: its octave ⌊log2 i⌋ under ``table``, then the octave's low bits raw."""
    if not 1 <= index < 2**MAX_OCTAVES:
        raise ValueError(f"candidate index {index} out of range")
    octave = index.bit_length() - 1
    enc.encode_symbol(table, octave)
    enc.encode_uniform(index - (1 << octave), octave)


def read_index(dec: ArithmeticDecoder, table: FrequencyTable) -> int:
    octave = dec.decode_symbol(table)
    return (1 << octave) + dec.decode_uniform(octave)


@functools.lru_cache(maxsize=8192)
def _octave_table(mean_q: int, std_q: int) -> FrequencyTable:
    """Octaves 0..MAX_OCTAVES−1 under a Gaussian (mean, std in 1/32 octaves) on octave bins."""
    mean, std = mean_q / 32.0, std_q / 32.0
    edges = (np.arange(MAX_OCTAVES + 1) - 0.5 - mean) / std
    edges[0], edges[-1] = -np.inf, np.inf
    return FrequencyTable.from_probs(np.diff(ndtr(edges)))


class OctaveModel:
    """The distribution of a chunk's index octave ⌊log2 i*⌋ given its KL κ (bits), learned as the file goes.

    PFR indices concentrate a little below κ with a spread that grows like √κ, so the model is a
    Gaussian over octaves with mean κ + μ·√(κ+1) and std σ·√(κ+1), where μ and σ are running
    estimates from the octaves already coded in this file (both sides see them), started from
    ``PRIOR_COUNT`` pseudo-observations at (μ, σ) = (−0.6, 1.0). One instance per file.
    """

    PRIOR_COUNT = 8.0
    PRIOR_MEAN, PRIOR_STD = -0.6, 1.0

    def __init__(self):
        self.count = self.PRIOR_COUNT
        self.sum = self.PRIOR_COUNT * self.PRIOR_MEAN
        self.sum_sq = self.PRIOR_COUNT * (self.PRIOR_STD**2 + self.PRIOR_MEAN**2)

    def table(self, kappa: float) -> FrequencyTable:
        scale = math.sqrt(max(kappa, 0.0) + 1.0)
        mu = self.sum / self.count
        sd = math.sqrt(max(self.sum_sq / self.count - mu * mu, 0.05))
        mean = max(kappa, 0.0) + mu * scale
        return _octave_table(int(round(min(max(mean, -4.0), MAX_OCTAVES) * 32)), int(round(max(sd * scale, 0.3) * 32)))

    def update(self, kappa: float, index: int) -> None:
        r = (index.bit_length() - 1 - max(kappa, 0.0)) / math.sqrt(max(kappa, 0.0) + 1.0)
        self.count += 1.0
        self.sum += r
        self.sum_sq += r * r
