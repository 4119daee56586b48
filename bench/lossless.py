"""Benchmark of the lossless bits-back codec → bench/results/lossless.json (+ lossless.png).

Measures on a prior (default: the embedded one) and a data set (default: Fashion-MNIST test):

- a chained stream of ``--num`` images (default 1,000) at the codec's default steps: real bits/dim of
  the file and of its payload (initial bits included), the VLB at the same steps on the same images
  (likelihood.evaluate_nll, mean ± standard error), initial bits, overhead in percent; encode and decode
  seconds per image and the coder's share of the time beyond the network evaluations; the decode is
  checked bit-exact;
- ``--single`` images (default 100) each compressed alone (header and initial bits included), against
  PNG (optimize), WebP lossless (method 6) and JPEG XL lossless (effort 7 and 10; imagecodecs), every
  classic decode checked exact.

Run (pause a background trainer for timing, resume it afterwards):

    pkill -STOP -f 'diffcodec train|train_default'; trap "pkill -CONT -f 'diffcodec train|train_default'" EXIT
    python bench/lossless.py                     # the full run
    python bench/lossless.py --num 200 --single 20   # a shorter run; the JSON records the sizes used
    python bench/lossless.py --num 0 --out bench/results/lossless_single.json   # single images only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `bench` importable

from bench import classic  # noqa: E402
from diffcodec.checkpoint import default_prior_path, load_prior  # noqa: E402
from diffcodec.coding import container, lossless  # noqa: E402
from diffcodec.coding.lossless import DEFAULT_GRID, DEFAULT_MAX_BATCH, CodecParams, compress, decompress  # noqa: E402
from diffcodec.data import load_images  # noqa: E402
from diffcodec.defaults import CODEC_SPACING, CODEC_STEPS  # noqa: E402
from diffcodec.likelihood import evaluate_nll  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def classic_sizes(image: np.ndarray) -> dict[str, int]:
    """Bytes of one [C, H, W] uint8 image in the classic lossless codecs (each decode checked exact)."""
    arr = classic.as_hwc(image)
    keys = [k for k in ("png", "webp_lossless", "jxl_lossless_e7", "jxl_lossless_e10") if k in classic.lossless_available()]
    return {k: classic.lossless_bytes(k, arr) for k in keys}


def vlb(prior, images, schedule, workers: int | None = None) -> tuple[torch.Tensor, float]:
    """(per-image VLB in bits/dim [N], Monte Carlo standard error of their mean).

    Two independent noise draws per image (likelihood.evaluate_nll, exact estimator, seeds 0 and 1,
    ``workers`` threads, default one per CPU core): the mean of both is the estimate; the spread of their difference
    measures the Monte Carlo error alone, the relevant error when real sizes of the *same* images are
    compared with it (image-to-image variation is common to both)."""
    draws = [
        torch.from_numpy(evaluate_nll(prior, images, schedule, seed=s, workers=workers or os.cpu_count()).image_bpd)
        for s in (0, 1)
    ]
    bpd = (draws[0] + draws[1]) / 2
    n = len(bpd)
    mc = float((draws[0] - draws[1]).std() / 2 / math.sqrt(n)) if n > 1 else float("nan")
    return bpd, mc


def chained(prior, images, names, params, workers: int | None = None) -> dict:
    blob, enc = compress(prior, images, names, params, progress=True)
    out, _, dec = decompress(prior, blob, progress=True)
    assert np.array_equal(out, images), "decode is not bit-exact"
    dims = images.size
    per_image, mc = vlb(prior, images, prior.schedule(params.steps, params.spacing), workers)
    mean, se = float(per_image.mean()), float(per_image.std() / math.sqrt(len(per_image)))
    file_bpd = enc.file_bits / dims
    # The first B images are the bootstrap (WebP/PNG files at the bottom of the stack), so the chain
    # proper codes images B..N-1: compare its bits with their VLB as well.
    boot = enc.bootstrap_tiles
    chain_bpd = enc.chain_bits / (dims - boot * images[0].size) if boot < len(images) else float("nan")
    chain_vlb = float(per_image[boot:].mean()) if boot < len(images) else float("nan")
    return {
        "images": len(images),
        "file_bits_per_dim": file_bpd,
        "payload_bits_per_dim": enc.payload_bits / dims,
        "vlb_bits_per_dim": mean,
        "vlb_stderr": se,
        "vlb_mc_stderr": mc,
        "ratio_file_to_vlb": file_bpd / mean,
        "ratio_payload_to_vlb": enc.payload_bits / dims / mean,
        "chain_bits_per_dim": chain_bpd,
        "chain_vlb_bits_per_dim": chain_vlb,
        "ratio_chain_to_vlb": chain_bpd / chain_vlb,
        "overhead_percent": 100 * (file_bpd / mean - 1),
        "initial_bits": enc.initial_bits,
        "bootstrap_tiles": boot,
        "batches": len(lossless.batch_sizes(enc.num_tiles - 1, params.max_batch, container.unpack(blob)[0].ramp)),
        "bootstrap_bits": enc.bootstrap_bits,
        "header_bits": enc.header_bits,
        "encode_seconds_per_image": enc.seconds / len(images),
        "decode_seconds_per_image": dec.seconds / len(images),
        "encode_coder_share": enc.coder_share,
        "decode_coder_share": dec.coder_share,
        "bit_exact": True,
    }


def singles(prior, images, params) -> dict:
    sizes: dict[str, list[int]] = {"diffcodec": []}
    for i, image in enumerate(images):
        blob, st = compress(prior, image[None], [f"{i}.png"], params)
        out, _, _ = decompress(prior, blob)
        assert np.array_equal(out[0], image)
        sizes["diffcodec"].append(len(blob))
        for name, n in classic_sizes(image).items():
            sizes.setdefault(name, []).append(n)
    dims = images[0].size
    return {
        "images": len(images),
        "bits_per_dim": {k: 8 * float(np.mean(v)) / dims for k, v in sizes.items()},
        "diffcodec_initial_bits_per_image": st.initial_bits,
        "diffcodec_bootstrap_bits_per_image": st.bootstrap_bits,
        "diffcodec_header_bits_per_image": st.header_bits,
        "note": "one file per image; sizes include headers. A one-tile diffcodec file is bootstrap-only: the "
        "tile's WebP-lossless/PNG file under diffcodec's header (no network evaluation)",
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result["chained"]
    bars = {"VLB (same steps)": c["vlb_bits_per_dim"], f"diffcodec, {c['images']} chained": c["file_bits_per_dim"]} if c else {}
    singles = result["single"]["bits_per_dim"] if result["single"] else {}
    bars.update({f"{k}, single": v for k, v in singles.items()})
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = (["#888", "#c44"] if c else []) + (["#c44"] + ["#48c"] * (len(singles) - 1) if singles else [])
    ax.barh(list(bars), list(bars.values()), color=colors)
    for y, v in enumerate(bars.values()):
        ax.text(v, y, f" {v:.3f}", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("bits/dim (lossless)")
    ax.set_title(f"{result['data']}: prior {result['prior_digest'][:12]}…, {result['steps']} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prior", default=None, help="prior file (default: the embedded one)")
    ap.add_argument("--data", default="fashion-mnist:test")
    ap.add_argument("--num", type=int, default=1000, help="images in the chained stream (0: single images only)")
    ap.add_argument("--single", type=int, default=100, help="images compressed one file each (0: none)")
    ap.add_argument("--workers", type=int, default=None, help="threads of the VLB evaluation (default: one per core)")
    ap.add_argument("--steps", type=int, default=CODEC_STEPS)
    ap.add_argument("--spacing", default=CODEC_SPACING.value)
    ap.add_argument("--grid", type=float, default=DEFAULT_GRID)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH)
    ap.add_argument("--out", type=Path, default=RESULTS / "lossless.json")
    args = ap.parse_args()

    prior = load_prior(args.prior)
    data = load_images(args.data)
    params = CodecParams(args.steps, args.spacing, args.grid, args.threads, args.max_batch).resolved(prior)
    t0 = time.time()
    result = {
        "prior": str(args.prior or default_prior_path()),
        "prior_digest": prior.digest,
        "prior_info": prior.info,
        "data": args.data,
        "steps": params.steps,
        "spacing": params.spacing.value,
        "grid": params.grid,
        "threads": params.threads,
        "max_batch": params.max_batch,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "chained": chained(prior, data.images[: args.num], data.names[: args.num], params, args.workers) if args.num else None,
        "single": singles(prior, data.images[: args.single], params) if args.single else None,
        "full_run": args.num >= 1000,
    }
    result["wall_seconds"] = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
