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


class Engine(str, enum.Enum):
    """How the network's forward pass runs (diffcodec.engines); AUTO: AUTO_ENGINE for the device."""

    AUTO = "auto"  # the measured default for the device: AUTO_ENGINE
    FLOAT32 = "float32"
    BF16 = "bf16"
    CHANNELS_LAST = "channels-last"
    BF16_CHANNELS_LAST = "bf16-channels-last"
    COMPILE = "compile"
    COMPILE_BF16 = "compile-bf16"
    ONNXRUNTIME = "onnxruntime"  # ONNX Runtime, CPU, float32 (the onnxruntime and onnx packages: the 'fast' extra)
    MIXED = "mixed"  # bf16 autocast away from t = 0, float32 (ONNX Runtime when installed) near it and at small batches

    @property
    def bf16(self) -> bool:
        return self in (Engine.BF16, Engine.BF16_CHANNELS_LAST, Engine.COMPILE_BF16)

    @property
    def channels_last(self) -> bool:
        return self in (Engine.CHANNELS_LAST, Engine.BF16_CHANNELS_LAST)

    @property
    def compiled(self) -> bool:
        return self in (Engine.COMPILE, Engine.COMPILE_BF16)


# The mixed engine (engines.MixedNet): float32 at timesteps t ≤ T·MIXED_FLOAT32_FRACTION, where bf16's
# round-off costs bits (python -m bench.bf16_terms: embedded prior, 32 test images, all 1000 terms, same
# noise: bf16 everywhere moves the bound by +1.17 %, 60 % of it in the term at t = 1; bf16 only above
# t = 10 moves it by +0.042 %, above t = 5 by +0.097 %), and for calls of fewer than MIXED_MIN_BF16_BATCH inputs (bf16 autocast gains
# nothing at batch 1: 0.79x, ONNX Runtime 1.74x; bench/results/engines.json).
MIXED_FLOAT32_FRACTION = 0.01
MIXED_MIN_BF16_BATCH = 8

# The engine that --engine auto picks per device type: the fastest whose bits/dim change is under 0.2 %
# (bench/results/engines.json: mixed, 1.72x / 1.30x / 2.22x at batch 1 / 8 / 64 on CPU, bound +0.038 %;
# ONNX Runtime 1.74x / 1.35x / 1.47x, bound unchanged; bf16 everywhere +1.15 %). On a CPU without bf16
# units (not measured) ONNX Runtime; without ONNX Runtime, mixed's float32 part runs eagerly, and
# without both, float32 (engines.resolve_engine). CUDA is not measured: float32.
AUTO_ENGINE = {"cpu": Engine.MIXED, "cuda": Engine.FLOAT32}

# Engines the coders may run, their index the code a compressed file records (append only: a code never
# changes meaning). Only engines whose outputs are bit-identical across fresh processes at a fixed thread
# count qualify (diffcodec.engines.coding_engine says why the others do not). MIXED codes only with ONNX
# Runtime installed (its float32 part must be the same network on both sides).
CODING_ENGINES = (Engine.FLOAT32, Engine.ONNXRUNTIME, Engine.MIXED)

# The engine that the coders' --engine auto picks per device type (compress; decompress follows the file),
# among CODING_ENGINES: compress ran 1.34x (ONNX Runtime) and 1.55x (mixed) as fast per image as float32
# on 128 Fashion-MNIST images, one thread, mostly batches of 64 (on 32 images, batches below 8: 1.36x and
# 1.42x; bench/results/coding_engines*.json). Mixed needs ONNX Runtime to code: float32 without it. CUDA:
# not measured.
AUTO_CODING_ENGINE = {"cpu": Engine.MIXED, "cuda": Engine.FLOAT32}

# The progressive coder's --engine auto: float32 everywhere. Encoding is search-bound, so ONNX Runtime
# speeds it by only 1.42x (decoding by 1.84x), and a float32 file decodes with the base install,
# without onnxruntime (10 test images: encode 2.29 vs 1.61 s/image, decode 0.39 vs 0.21; bench/results/timing.json).
AUTO_PROGRESSIVE_ENGINE = {"cpu": Engine.FLOAT32, "cuda": Engine.FLOAT32}
