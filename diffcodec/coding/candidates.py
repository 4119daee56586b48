"""The candidates of reverse channel coding, from counters, and the two searches over them.

Shared randomness is a counter-based generator, so any candidate can be regenerated alone: word n of
the stream seeded S is splitmix64's output

    word(S, n) = mix(S + (n + 1)·γ mod 2^64),   γ = 0x9E3779B97F4A7C15,
    mix(z):  z ← (z ⊕ z≫30)·0xBF58476D1CE4E5B9;  z ← (z ⊕ z≫27)·0x94D049BB133111EB;  z ⊕ z≫31

(Steele, Lea & Flood 2014; the same 64-bit arithmetic in numpy, numba and torch). Candidate i
(1-based) of a chunk of d dimensions seeded S takes words (i − 1)·W … (i − 1)·W + W − 1, W = ⌈d/8⌉;
their little-endian bytes, the first d of them, are its quantile codes (coding.rcc). The encoder's
private arrival times T_i = E_1 + … + E_i use E_j = −ln U_j, U_j = (word(S', j − 1)≫11 + ½)·2^−53
from a private seed S' (never sent; it makes encoding deterministic), summed per group of 64
candidates as one logarithm of a running product (:func:`arrival_times`), so a candidate costs a
logarithm only when its score could win.

Two searches find i* = argmax_{i ≤ N} Σ_j a_j m(c_ij)² + b_j m(c_ij) − ln T_i (m: the bins'
conditional means), the first of equal scores, stopping once ln T_i exceeds ``ceiling`` minus the
best score (no later candidate can win):

- :func:`search_cpu`: one fused pass per candidate (words, table look-up, two multiply-adds,
  arrival) compiled by numba, run on ``workers`` threads that take interleaved groups of
  candidates. Each thread keeps its own best and stops by its own rule, which is never earlier than
  the sequential one, so the answer does not depend on the thread count.
- :func:`search_torch`: blocks of candidates as tensors on any device (CUDA), the same codes and
  arrivals; scores are float32 sums in another order, so a near tie may go the other way: both
  answers are candidates the decoder regenerates alike.

Tests check the numpy and torch words against splitmix64 in Python integers, and both searches (the
numba one on 1–3 threads) against a plain argmax over the decoder's codes.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

GAMMA, MIX1, MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_G, _M1, _M2 = np.uint64(GAMMA), np.uint64(MIX1), np.uint64(MIX2)
_S11, _S30, _S27, _S31 = np.uint64(11), np.uint64(30), np.uint64(27), np.uint64(31)
_ONE = np.uint64(1)
GROUP = 64  # candidates a search thread takes at a time (threads interleave groups)
TORCH_BLOCK_CODES = 1 << 20  # codes per block in search_torch
TINY = 1e-300  # the running product of a group's uniforms is kept above this (it never comes near: 64 draws)


def mix(z):
    """splitmix64's finalizer on uint64 (numpy arrays or scalars; compiled as is by numba)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def words(seed: int, first: int, count: int) -> np.ndarray:
    """word(seed, first … first + count − 1): [count] uint64."""
    n = np.arange(first + 1, first + count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return mix(np.uint64(seed) + n * _G)


def codes(seed: int, index: int, d: int) -> np.ndarray:
    """Quantile codes of candidate ``index`` (1-based) of a chunk of ``d`` dimensions: [d] uint8."""
    w = -(-d // 8)
    return words(seed, (index - 1) * w, w).astype("<u8").view(np.uint8)[:d].copy()


# -- torch (any device) ------------------------------------------------------------------------
def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 holding uint64 bits."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def words_torch(seed: int, n: torch.Tensor) -> torch.Tensor:
    """word(seed, n) for int64 counters n (any device): int64 holding the uint64 bits (wrapping arithmetic)."""
    z = (n + 1) * _signed(GAMMA) + _signed(seed)
    z = (z ^ _shr(z, 30)) * _signed(MIX1)
    z = (z ^ _shr(z, 27)) * _signed(MIX2)
    return z ^ _shr(z, 31)


def _little_endian_bytes(w: torch.Tensor) -> torch.Tensor:
    """[..., W] int64 → [..., 8W] uint8, byte r of each word at position 8w + r (whatever the host order)."""
    shifts = torch.arange(0, 64, 8, device=w.device)
    return ((w.unsqueeze(-1) >> shifts) & 0xFF).to(torch.uint8).flatten(-2)


def arrival_times(private: int, start: int, count: int, before: float = 0.0, device="cpu") -> torch.Tensor:
    """T of candidates start + 1 … start + count (``start`` a multiple of GROUP, ``before`` = T_start): [count] float64.

    Per group of GROUP candidates, T_i = T before the group − ln Π U_j over the group's j ≤ i: one
    logarithm per candidate where it matters, and the same numbers as the numba kernel's running product.
    """
    n = torch.arange(start, start + count, device=device)
    u = (_shr(words_torch(private, n), 11).double() + 0.5) * 2.0**-53
    pad = -count % GROUP
    prod = torch.cat([u, u.new_ones(pad)]).view(-1, GROUP).cumprod(1).clamp(min=TINY)
    group = -torch.log(prod[:, -1])
    first = before + torch.cat([group.new_zeros(1), torch.cumsum(group, 0)[:-1]])
    return (first.view(-1, 1) - torch.log(prod)).flatten()[:count]


@torch.no_grad()
def search_torch(a: torch.Tensor, b: torch.Tensor, means: torch.Tensor, seed: int, private: int, n: int,
                 ceiling: float) -> tuple[int, int]:
    """(i*, candidates scored) over candidates 1..n, blocks of tensors on ``a``'s device; a, b [d] float32."""
    device, d = a.device, a.numel()
    w = -(-d // 8)
    size = max(1, min(n, TORCH_BLOCK_CODES // (8 * w)) // GROUP) * GROUP
    a, b, means = a.view(d, 1), b.view(d, 1), means.to(device)
    best, best_index, scored, before = -math.inf, 0, 0, 0.0
    for start in range(0, n, size):
        if before > 0 and math.log(before) > ceiling - best:
            break
        count = min(size, n - start)
        t = arrival_times(private, start, count, before, device)
        before = float(t[-1]) if count % GROUP == 0 else before
        rows = torch.arange(start, start + count, device=device).view(-1, 1) * w + torch.arange(w, device=device)
        m = means[_little_endian_bytes(words_torch(seed, rows))[:, :d].long()]
        score = (torch.mm(m * m, a) + torch.mm(m, b)).view(-1).double() - torch.log(t)
        scored += count
        value = float(score.max())
        if value > best:
            best, best_index = value, start + int(torch.nonzero(score == value)[0, 0]) + 1
    return best_index, scored


# -- numba (CPU) -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _kernel():
    """The fused CPU search (coding.search_kernel, compiled by numba on first use and cached on disk), or None."""
    try:
        from .search_kernel import search
    except ImportError:
        return None
    return search


def numba_available() -> bool:
    return _kernel() is not None


def search_cpu(a: np.ndarray, b: np.ndarray, means: np.ndarray, seed: int, private: int, n: int, ceiling: float,
               workers: int = 1) -> tuple[int, int]:
    """(i*, candidates scored) over candidates 1..n with the numba kernel; a, b [d] float32, means [256] float32."""
    kernel = _kernel()
    a, b, means = (np.ascontiguousarray(v, dtype=np.float32) for v in (a, b, means))
    ceiling = float(ceiling)
    parts = max(1, min(workers, -(-n // GROUP)))

    def run(part: int):
        return kernel(seed, private, n, part, parts, a, b, means, ceiling)

    results = [run(0)] if parts == 1 else list(_pool(parts).map(run, range(parts)))
    index = max(results, key=lambda r: (r[0], -r[1]))[1]  # the best score, the first index among equals
    return index, sum(r[2] for r in results)


@functools.lru_cache(maxsize=4)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="diffcodec-rcc")
