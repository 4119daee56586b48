"""Reverse channel coding of diagonal Gaussians: send a sample of q at about KL(q‖p) bits.

The encoder knows q = N(μ_q, σ_q² I) and p = N(μ_p, diag σ_p²); the decoder knows only p. Both
regenerate the same candidates from p with seeded generators, and the encoder sends the index of
one candidate. The selection is the Poisson functional representation (Li & El Gamal 2018):
candidates x_i = μ_p + σ_p ⊙ ε_i with ε_i ~ N(0, I) from shared randomness, arrival times
T_i = E_1 + … + E_i with E_j ~ Exp(1) private to the encoder, and

    i* = argmax_i  log w_i − log T_i,        w_i = q(x_i)/p(x_i).

Searched over all i, x_{i*} is an exact sample of q and i* costs about KL + log(KL + 1) + O(1) bits.
The search here stops after N = 2^⌈KL + margin⌉ candidates (the encoder knows the KL; the decoder
does not need N), so the sample is biased towards p by an amount that falls as the margin grows;
the codec measures and reports it (see bench/progressive.py). For Gaussians,
log w(ε) = Σ_j a_j ε_j² + b_j ε_j + c with

    a_j = ½(1 − σ_p,j²/σ_q²),   b_j = σ_p,j (μ_q,j − μ_p,j)/σ_q²    (:func:`log_weight_coefs`),

so one candidate costs two multiply-adds per dimension after its draw.

Shared randomness: candidate block ``b`` (``BLOCK`` candidates) of a chunk comes from a torch
generator seeded with a hash of (chunk seed, b), so the decoder regenerates only the block holding
i*. Candidates are float32 normals; they run on the coder's device (a file records which).

Index code: i* ≥ 1 falls in octave o = ⌊log2 i*⌋; o is sent with a canonical Huffman code over
octaves whose masses come from Zipf(s), s = 1 + 1/(κ + 0.9) (κ: the decoder's estimate of the
chunk's KL in bits), then the o low bits of i* raw. Round trip (a test executes this)::

    >>> import torch
    >>> from diffcodec.coding.bits import BitReader, BitWriter
    >>> mu_p, sd_p = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    >>> mu_q = torch.full((6,), 0.8, dtype=torch.float64)
    >>> a, b = log_weight_coefs(mu_q, 0.9, mu_p, sd_p)
    >>> pick = select(a, b, seed=7, kl_bits=kl_bits(mu_q, 0.9, mu_p, sd_p), margin=4, private=torch.Generator().manual_seed(1))
    >>> w = BitWriter(); IndexCode.for_kl(2.0).write(w, pick.index)
    >>> r = BitReader(w.to_bytes(), w.num_bits)
    >>> index = IndexCode.for_kl(2.0).read(r)
    >>> bool(torch.equal(candidate(7, index, 6), pick.eps))
    True
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import zeta

from .bits import BitReader, BitWriter, HuffmanCode

BLOCK = 1024  # candidates per seeded block
MAX_OCTAVES = 40  # indices up to 2^40 − 1 are codable (the encoder never searches that far)
ZIPF_OFFSET = 0.9  # s = 1 + 1/(κ + 0.9), the exponent diffc (Vonderfecht & Liu 2025) uses for PFR indices
KAPPA_QUANTUM = 8  # the index model's κ is rounded to 1/8 bit (cached codes, identical on both sides)


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


def _block(seed: int, block: int, d: int, device) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(seed_of(seed, block))
    return torch.randn(BLOCK, d, generator=gen, device=device, dtype=torch.float32)


def candidate(seed: int, index: int, d: int, device="cpu") -> torch.Tensor:
    """ε of candidate ``index`` (1-based) of the chunk seeded ``seed``: [d] float32."""
    block, row = divmod(index - 1, BLOCK)
    return _block(seed, block, d, device)[row].clone()


@dataclass
class Selection:
    index: int  # 1-based
    eps: torch.Tensor  # [d] float32, the chosen candidate's noise
    searched: int  # candidates drawn


def search_size(kl: float, margin: float, max_bits: int) -> int:
    """N = 2^⌈KL + margin⌉ candidates, at least one block, at most 2^max_bits."""
    bits = min(max(math.ceil(kl + margin), 0), max_bits)
    return max(BLOCK, 1 << bits)


@torch.no_grad()
def select(a: torch.Tensor, b: torch.Tensor, seed: int, kl_bits: float, margin: float, private: torch.Generator,
           max_bits: int = 20) -> Selection:
    """Truncated PFR over N = search_size(kl_bits, margin) candidates of one chunk ([d] coefficients)."""
    device = a.device
    d = a.numel()
    a32, b32 = a.float().view(d, 1), b.float().view(d, 1)
    n = search_size(kl_bits, margin, max_bits)
    arrivals = torch.empty(n, dtype=torch.float64).exponential_(generator=private).cumsum(0).log().to(device)
    best, best_index, best_eps = -math.inf, 0, None
    for blk in range(n // BLOCK):
        eps = _block(seed, blk, d, device)
        score = ((eps * eps) @ a32 + eps @ b32).view(-1).double() - arrivals[blk * BLOCK : (blk + 1) * BLOCK]
        value, row = torch.max(score, 0)
        if float(value) > best:
            best, best_index, best_eps = float(value), blk * BLOCK + int(row) + 1, eps[int(row)].clone()
    return Selection(index=best_index, eps=best_eps, searched=n)


class IndexCode:
    """Octave (Huffman over Zipf masses) + raw low bits, for 1-based indices."""

    def __init__(self, kappa: float):
        s = 1.0 + 1.0 / (kappa + ZIPF_OFFSET)
        edges = 2.0 ** np.arange(MAX_OCTAVES + 1)
        tail = zeta(s, edges)  # Σ_{n ≥ edge} n^-s
        mass = tail[:-1] - tail[1:]
        mass[-1] += tail[-1]
        probs = np.round(mass / mass.sum() * 2.0**40) / 2.0**40  # exact in float64: Huffman ties break the same everywhere
        self.huffman = HuffmanCode.from_probs(probs)

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def _cached(q: int) -> "IndexCode":
        return IndexCode(q / KAPPA_QUANTUM)

    @classmethod
    def for_kl(cls, kappa: float) -> "IndexCode":
        q = int(round(min(max(kappa, 0.0), 64.0) * KAPPA_QUANTUM))
        return cls._cached(q)

    def cost(self, index: int) -> int:
        octave = index.bit_length() - 1
        return int(self.huffman.lengths[octave]) + octave

    def write(self, w: BitWriter, index: int) -> None:
        if not 1 <= index < 2**MAX_OCTAVES:
            raise ValueError(f"candidate index {index} out of range")
        octave = index.bit_length() - 1
        self.huffman.write(w, octave)
        w.write(index - (1 << octave), octave)

    def read(self, r: BitReader) -> int:
        octave = self.huffman.read(r)
        return (1 << octave) + r.read(octave)
