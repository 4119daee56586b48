"""bench.stream_split on one image: the symbols it charges add up to the stream the encoder wrote."""

from __future__ import annotations

import numpy as np

from bench import stream_split
from diffcodec.checkpoint import load_prior
from diffcodec.coding.arith import ArithmeticEncoder
from diffcodec.coding.progressive import ProgressiveParams, encode
from diffcodec.data import load_fashion_mnist


def test_split_adds_up_to_the_stream(one_thread):
    body = stream_split.run(1)
    assert ArithmeticEncoder.encode_symbol.__name__ == "encode_symbol"  # the wrappers are gone again
    enc = encode(load_prior(), np.asarray(load_fashion_mnist("test").images[0]), ProgressiveParams(finish="end"))
    last = max((s for s in enc.steps if s.n < enc.total_steps), key=lambda s: s.n)  # x_1: the whole step stream
    ideal = body["level_bits"] + body["octave_bits"] + body["raw_bits"]
    assert 0 <= last.stream_bits - ideal < 16  # the arithmetic coder's termination and round-off
    assert abs(body["chunk_kl_bits"] - last.kl_bits) < 1e-6 * last.kl_bits
    assert body["chunks"] == sum(s.chunks for s in enc.steps) and body["levels"] > 10
    assert 0 < body["per_chunk"]["index_over_kl_bits"] < 6 and body["stream_over_chunk_kl"] > 1
