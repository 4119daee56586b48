"""``python -m bench.coding_engines``: compress (and decompress) seconds per image, float32 eager against
ONNX Runtime and the mixed engine, side by side in one process (issue #12: the coders' default engine).

Each round compresses the same images once per coding engine (diffcodec.defaults.CODING_ENGINES), the
engines' order alternating between rounds, one thread (``CodecParams.threads = 1``, the default);
the figure per engine is its best round. The ONNX Runtime time includes exporting the network and
building its session (once per call, as the command does). The last round's files are decompressed
once per engine and checked bit-exact. Writes ``coding_engines.json`` in ``--out``.

    OMP_NUM_THREADS=1 python -m bench.coding_engines --num 32 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .provenance import RESULTS


def run(num: int, rounds: int, data: str) -> dict:
    import numpy as np
    import torch

    from diffcodec.checkpoint import load_prior
    from diffcodec.coding.lossless import CodecParams, compress, decompress
    from diffcodec.data import load_images
    from diffcodec.defaults import CODING_ENGINES

    torch.set_num_threads(1)
    prior = load_prior()
    images = load_images(data, prior.image_shape[0], prior.image_shape[1:]).subset(num).images
    images = np.asarray(images)
    names = [f"i{i:05d}.png" for i in range(len(images))]
    runs: dict[str, list[dict]] = {e.value: [] for e in CODING_ENGINES}
    blobs = {}
    for r in range(rounds):
        for engine in (CODING_ENGINES if r % 2 == 0 else CODING_ENGINES[::-1]):
            blob, stats = compress(prior, images, names, CodecParams(engine=engine))
            runs[engine.value].append({"seconds": stats.seconds, "network_seconds": stats.network_seconds,
                                       "file_bytes": len(blob), "load1": os.getloadavg()[0]})
            blobs[engine.value] = blob
            print(f"round {r} {engine.value}: {stats.seconds / len(images):.3f} s/image, {len(blob)} bytes", flush=True)
    decode = {}
    for name, blob in blobs.items():
        t0 = time.perf_counter()
        out, _, stats = decompress(prior, blob)
        decode[name] = {"seconds": time.perf_counter() - t0, "exact": bool((out == images).all()),
                        "engine": stats.engine.value}
        print(f"decompress {name}: {decode[name]['seconds'] / len(images):.3f} s/image, exact {decode[name]['exact']}")
    best = {name: min(x["seconds"] for x in rs) / len(images) for name, rs in runs.items()}
    return {
        "data": data, "images": len(images), "rounds": rounds, "threads": 1, "runs": runs,
        "compress_seconds_per_image": best,
        "decompress_seconds_per_image": {n: d["seconds"] / len(images) for n, d in decode.items()},
        "decompress": decode,
        "compress_speedup_onnxruntime": best["float32"] / best["onnxruntime"],
        "compress_speedup": {name: best["float32"] / b for name, b in best.items()},
        "decompress_speedup": {n: decode["float32"]["seconds"] / d["seconds"] for n, d in decode.items()},
        "torch": torch.__version__,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.coding_engines", description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=32, help="first N images of --data (default 32)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data", default="fashion-mnist:test")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="coding_engines", help="results file NAME.json in --out")
    args = ap.parse_args(argv)
    result = run(args.num, args.rounds, args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print("compress speed-up over float32:", {k: round(v, 3) for k, v in result["compress_speedup"].items()})


if __name__ == "__main__":
    main()
