"""matplotlib for the bench figures: the Agg backend and one look for every codec."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only); a clear error if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("bench figures need matplotlib: pip install -e '.[bench]'") from None
    return plt


STYLE = {  # label → matplotlib keyword arguments, so every figure draws a codec the same way
    "JPEG": {"color": "#7f7f7f", "marker": "s", "ms": 3, "lw": 1.2},
    "WebP": {"color": "#1f77b4", "marker": "o", "ms": 3, "lw": 1.2},
    "JPEG XL": {"color": "#2ca02c", "marker": "^", "ms": 3, "lw": 1.2},
    "AVIF": {"color": "#9467bd", "marker": "D", "ms": 3, "lw": 1.2},
    "diffcodec ideal": {"color": "#d62728", "marker": None, "lw": 2.0},
    "diffcodec encode": {"color": "#ff7f0e", "marker": "o", "ms": 3, "lw": 2.0},
}


def style(label: str) -> dict:
    return dict(STYLE.get(label, {"lw": 1.2}))
