"""Bjøntegaard delta rate (BD-rate, PSNR) between two rate–distortion curves.

BD-rate (Bjøntegaard, VCEG-M33, 2001) is the average relative rate difference of the test curve
against the anchor over the PSNR interval where both are measured:

    BD-rate = 10^{ (1/(P_hi − P_lo)) ∫_{P_lo}^{P_hi} [log10 R_test(P) − log10 R_anchor(P)] dP } − 1,

with each log-rate interpolated as a function of PSNR. Negative: the test codec needs fewer bits for
the same quality. The computation is the maintained ``bjontegaard`` package (FAU-LMS, PyPI) with
Akima interpolation, the method its authors recommend; this module only prepares the curves: each is
reduced to its upper RD front (strictly increasing in rate and PSNR, as interpolation requires) and
trimmed to the overlapping PSNR interval plus one point beyond each end, so that a curve with a long
tail outside the overlap (the ideal diffcodec curve starts at 5 dB) does not bend the interpolant
inside it. BD-PSNR (average dB gained at equal rate, over the overlapping log-rate interval) comes
from the same package.
"""

from __future__ import annotations

import warnings

import numpy as np

from .classic import rd_front

METHOD = "akima"


def _trim(rate: np.ndarray, quality: np.ndarray, lo: float, hi: float, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points whose ``key`` lies in [lo, hi], plus the nearest one outside on each side."""
    inside = np.nonzero((key >= lo) & (key <= hi))[0]
    if len(inside) == 0:
        return rate[:0], quality[:0]
    first, last = max(inside[0] - 1, 0), min(inside[-1] + 1, len(key) - 1)
    return rate[first : last + 1], quality[first : last + 1]


def overlap_db(anchor: tuple, test: tuple) -> tuple[float, float] | None:
    """The PSNR interval both fronts cover, or None."""
    (_, pa), (_, pt) = rd_front(*anchor), rd_front(*test)
    if len(pa) < 2 or len(pt) < 2:
        return None
    lo, hi = max(pa[0], pt[0]), min(pa[-1], pt[-1])
    return (float(lo), float(hi)) if hi > lo else None


def bd_rate(anchor: tuple, test: tuple) -> float | None:
    """BD-rate in percent of ``test`` = (bits_per_dim, psnr) against ``anchor``; None without overlap.

    Needs the ``bjontegaard`` package (``pip install 'diffcodec[bench]'``).
    """
    import bjontegaard

    span = overlap_db(anchor, test)
    if span is None:
        return None
    (ra, pa), (rt, pt) = rd_front(*anchor), rd_front(*test)
    ra, pa = _trim(ra, pa, *span, key=pa)
    rt, pt = _trim(rt, pt, *span, key=pt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package warns below 75 % overlap; we report the overlap
        return float(bjontegaard.bd_rate(ra, pa, rt, pt, method=METHOD, require_matching_points=False, min_overlap=0))


def bd_psnr(anchor: tuple, test: tuple) -> float | None:
    """BD-PSNR in dB of ``test`` against ``anchor`` over their common log-rate interval; None without one."""
    import bjontegaard

    (ra, pa), (rt, pt) = rd_front(*anchor), rd_front(*test)
    if len(ra) < 2 or len(rt) < 2:
        return None
    lo, hi = max(ra[0], rt[0]), min(ra[-1], rt[-1])
    if not hi > lo:
        return None
    ra, pa = _trim(ra, pa, lo, hi, key=ra)
    rt, pt = _trim(rt, pt, lo, hi, key=rt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(bjontegaard.bd_psnr(ra, pa, rt, pt, method=METHOD, require_matching_points=False, min_overlap=0))


def compare(anchor: tuple, test: tuple) -> dict:
    """BD-rate (%), BD-PSNR (dB) and the PSNR interval they cover."""
    span = overlap_db(anchor, test)
    return {
        "bd_rate_percent": bd_rate(anchor, test),
        "bd_psnr_db": bd_psnr(anchor, test),
        "overlap_psnr_db": list(span) if span else None,
    }
