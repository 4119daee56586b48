"""The progressive encoder's candidate search on the CPU, compiled by numba (coding.candidates).

Imported only when the encoder searches (numba's import and the cached machine code take about a
second), so commands that do not search never load numba.
"""

from __future__ import annotations

import numba
import numpy as np

from .candidates import GROUP, TINY, _G, _ONE, _S11, mix

_mix = numba.njit(inline="always", cache=True)(mix)


@numba.njit(nogil=True, cache=True)  # strict IEEE: every thread gets the same T
def group_times(private, start, count, total, prods):
    """Running products of the group's uniforms into ``prods`` → T after the group."""
    prod = 1.0
    for k in range(count):
        prod = max(prod * ((np.float64(_mix(private + (np.uint64(start + k) + _ONE) * _G) >> _S11) + 0.5) * 2.0**-53),
                   TINY)
        prods[k] = prod
    return total - np.log(prod)


# Reassociation lets the sum over dimensions vectorize; one compiled loop scores every candidate
# whichever thread takes it, so scores (and the choice) do not depend on the thread count.
@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def search(seed, private, n, part, parts, a, b, means, ceiling):
    d = a.shape[0]
    w = (d + 7) // 8
    buf = np.empty(w, dtype=np.uint64)
    c = buf.view(np.uint8)
    prods = np.empty(GROUP, dtype=np.float64)
    seed_u, private_u = np.uint64(seed), np.uint64(private)
    best, best_index, scored, total = -np.inf, 0, 0, 0.0  # total: T before the group
    for start in range(0, n, GROUP):
        log_lo = np.log(total) if total > 0.0 else -np.inf  # ln T of every candidate in the group is above it
        if log_lo > ceiling - best:
            break
        count = min(GROUP, n - start)
        after = group_times(private_u, start, count, total, prods)
        if (start // GROUP) % parts == part:
            for k in range(count):
                n0 = np.uint64((start + k) * w)
                for v in range(w):
                    buf[v] = _mix(seed_u + (n0 + np.uint64(v) + _ONE) * _G)
                s = np.float32(0.0)
                for j in range(d):
                    m = means[c[j]]
                    s += m * (a[j] * m + b[j])
                scored += 1
                if s - log_lo > best:  # else it cannot win: ln T_i ≥ log_lo
                    value = np.float64(s) - np.log(total - np.log(prods[k]))
                    if value > best:
                        best, best_index = value, start + k + 1
        total = after
    return best, best_index, scored
