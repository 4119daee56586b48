"""Held-out bits/dim against training step from a `diffcodec train --eval-log` file → PNG.

    python bench/plot_train_log.py bench/results/default_prior_train_log.jsonl   # writes …_train_log.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="PNG (default: the log's name with .png)")
    args = ap.parse_args()
    points = sorted((json.loads(line) for line in args.log.read_text().splitlines() if line.strip()), key=lambda d: d["step"])
    steps = [d["step"] for d in points]
    bpd = [d["heldout_bpd"] for d in points]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, bpd, "o-", ms=4)
    for s, b in zip(steps, bpd):
        if s in (steps[0], steps[-1]) or s % 5000 == 0:
            ax.annotate(f"{b:.3f}", (s, b), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set(xlabel="training step (batch 64)", ylabel="held-out bits/dim (100 steps)",
           title="held-out bits/dim (the same held-out images and noise at every evaluation)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out or args.log.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main()
