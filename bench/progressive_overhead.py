"""``python -m bench.progressive_overhead``: where the default progressive files' bits over the VLB go,
per image (issue #9's per-image lossless target, ≤ 1.20 × the VLB).

Reads the committed ``progressive.json`` (its ``images[i].lossless_bytes``: the default exact file of
test image i) and recomputes each image's VLB at the same steps with the same seeded noise as that
stage (bench.progressive._ideal, one torch thread: a few minutes). Reports the ratio per image, how
many images exceed 1.20, the correlation of the ratio with the VLB, and the mean overhead in bits
split into the fixed part (header and checksums: the size of a file that stops at step 0) and the
rest (the step stream and x_0's finish over the VLB). Writes ``progressive_overhead.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .context import Context
from .progressive import _ideal
from .provenance import RESULTS, read_json, write_json

TARGET = 1.20


def run(results: Path = RESULTS) -> dict:
    from diffcodec.schedule import Spacing

    body = read_json(results / "progressive.json")
    num = body["num_images"]
    ctx = Context(num=num, data=body["data"], verbose=False, out=results)
    if ctx.prior.digest != body["prior_digest"]:
        raise SystemExit("progressive.json was made with another prior than the embedded one")
    schedule = ctx.prior.schedule(body["steps"], Spacing(body["spacing"]))
    cum, _ = _ideal(ctx, ctx.images[:num], schedule)
    vlb = cum[:, -1]
    file_bits = np.array([8.0 * im["lossless_bytes"] for im in body["images"]])
    fixed = np.array([8.0 * im["points"][0]["bytes"] - im["points"][0]["stream_bits"] for im in body["images"]])
    ratio = file_bits / vlb
    worst = np.argsort(-ratio)[:5]
    return {
        "num_images": num, "target": TARGET,
        "mean_ratio_of_means": float(file_bits.mean() / vlb.mean()),
        "images_above_target": int((ratio > TARGET).sum()),
        "max_ratio": float(ratio.max()), "min_ratio": float(ratio.min()),
        "corr_ratio_vlb": float(np.corrcoef(ratio, vlb)[0, 1]),
        "mean_vlb_bits": float(vlb.mean()), "mean_file_bits": float(file_bits.mean()),
        "mean_overhead_bits": float((file_bits - vlb).mean()),
        "fixed_bits_per_file": float(fixed.mean()),
        "mean_overhead_beyond_fixed_bits": float((file_bits - fixed - vlb).mean()),
        "worst": [{"index": int(i), "ratio": float(ratio[i]), "vlb_bits": float(vlb[i]), "file_bits": float(file_bits[i])}
                  for i in worst],
        "per_image": [{"index": i, "vlb_bits": float(vlb[i]), "file_bits": float(file_bits[i]), "ratio": float(ratio[i])}
                      for i in range(num)],
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.progressive_overhead", description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder holding progressive.json (and the output)")
    args = ap.parse_args(argv)
    out = run(args.results)
    write_json(args.results / "progressive_overhead.json", out)
    print({k: v for k, v in out.items() if k not in ("per_image", "worst")})
    print("worst:", out["worst"])


if __name__ == "__main__":
    main()
