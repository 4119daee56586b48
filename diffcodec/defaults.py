"""Defaults shared by the commands, in one place.

This module stays light (no torch): the command line builds its options from it without importing
the heavy modules, so that ``diffcodec --help`` answers at once.
"""

from __future__ import annotations

import enum

from .schedule import Spacing

# Steps and spacing the codecs (compress/encode) use unless told otherwise. The embedded prior's
# test-set bits/dim is reported at exactly these (README).
CODEC_STEPS = 100
CODEC_SPACING = Spacing.FRONT

# Lossless codec (coding.lossless).
DEFAULT_GRID = 2.0  # measured on the Gaussian oracle (T = 1000, 100 steps): G = 2, 3, 4 → +0.08, +0.09, +0.11 %
DEFAULT_MAX_BATCH = 64

# Likelihood evaluation (likelihood.evaluate_nll).
DEFAULT_BATCH = 8  # images per batch
DEFAULT_PAIRS_PER_CALL = 32  # (image, step) pairs per network call; CPU caches favour small calls
DEFAULT_SAMPLES = 16  # steps sampled per image by the MC estimator


class Estimator(str, enum.Enum):
    """How likelihood.evaluate_nll sums the K steps: every one, a stratified sample, or the cheaper."""

    EXACT = "exact"
    MC = "mc"
    AUTO = "auto"  # MC when it saves more than MC_SAVING× the network calls (K > MC_SAVING·(S + 1))


MC_SAVING = 4
