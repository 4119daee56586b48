"""``python -m bench.stream_split``: where the progressive step stream's bits go (issue #9).

Encodes the first ``--num`` Fashion-MNIST test images with the embedded prior, walking the whole
chain to x_1 (``--finish end``, default parameters), and charges every arithmetic-coded symbol its
ideal cost −log2 P under the table it was coded with: the KL-level symbols (one per transmission and
tile), the candidate indices' octaves and their raw low bits, against the KL of the chunks sent. The
coder's own calls are wrapped for the count (the files are the ones `encode` writes). Writes
``stream_split.json`` in ``--out``. About 3 s per image here.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .provenance import RESULTS, provenance, write_json


def run(num: int) -> dict:
    import numpy as np

    import diffcodec.coding.progressive as progressive
    from diffcodec.checkpoint import load_prior
    from diffcodec.coding.arith import ArithmeticEncoder
    from diffcodec.data import load_fashion_mnist

    acc = {"level_bits": 0.0, "octave_bits": 0.0, "raw_bits": 0.0, "chunk_kl_bits": 0.0, "chunks": 0, "levels": 0}
    in_index = [False]
    symbol, uniform, write_index, add = (ArithmeticEncoder.encode_symbol, ArithmeticEncoder.encode_uniform,
                                         progressive.write_index, progressive.StepStats.add)

    def counted_symbol(self, table, s):
        acc["octave_bits" if in_index[0] else "level_bits"] += -math.log2(table.freqs[s] / table.total)
        acc["chunks" if in_index[0] else "levels"] += 1
        return symbol(self, table, s)

    def counted_uniform(self, value, nbits):
        acc["raw_bits"] += nbits
        return uniform(self, value, nbits)

    def counted_index(enc, table, index):
        in_index[0] = True
        try:
            return write_index(enc, table, index)
        finally:
            in_index[0] = False

    def counted_add(self, xs, mq, sd_q, mp, kl, searched):
        acc["chunk_kl_bits"] += kl
        return add(self, xs, mq, sd_q, mp, kl, searched)

    prior = load_prior()
    images = load_fashion_mnist("test").images[:num]
    try:
        ArithmeticEncoder.encode_symbol, ArithmeticEncoder.encode_uniform = counted_symbol, counted_uniform
        progressive.write_index, progressive.StepStats.add = counted_index, counted_add
        for image in images:
            progressive.encode(prior, np.asarray(image), progressive.ProgressiveParams(finish="end"))
    finally:
        ArithmeticEncoder.encode_symbol, ArithmeticEncoder.encode_uniform = symbol, uniform
        progressive.write_index, progressive.StepStats.add = write_index, add
    c, n = acc["chunks"], acc["levels"]
    stream = acc["level_bits"] + acc["octave_bits"] + acc["raw_bits"]
    return {
        "label": "the progressive step stream's ideal bits by symbol kind, walk to x_1, default parameters",
        "num_images": num, **{k: v / num for k, v in acc.items()},
        "per_chunk": {"kl_bits": acc["chunk_kl_bits"] / c, "octave_bits": acc["octave_bits"] / c,
                      "raw_bits": acc["raw_bits"] / c,
                      "index_over_kl_bits": (acc["octave_bits"] + acc["raw_bits"] - acc["chunk_kl_bits"]) / c},
        "per_level_symbol_bits": acc["level_bits"] / n,
        "stream_over_chunk_kl": stream / acc["chunk_kl_bits"],
        "share_of_overhead": {"index": (acc["octave_bits"] + acc["raw_bits"] - acc["chunk_kl_bits"]) / (stream - acc["chunk_kl_bits"]),
                              "levels": acc["level_bits"] / (stream - acc["chunk_kl_bits"])},
        "provenance": provenance(prior, num, "fashion-mnist:test"),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.stream_split", description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=20, help="first N test images (default 20)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    body = run(args.num)
    write_json(args.out / "stream_split.json", body)
    print({k: round(v, 3) for k, v in body["per_chunk"].items()}, "level symbol", round(body["per_level_symbol_bits"], 3),
          "stream/KL", round(body["stream_over_chunk_kl"], 3))


if __name__ == "__main__":
    main()
