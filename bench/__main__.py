"""``python -m bench STAGE… [options]``: the figures of bench/, each stage writing JSON + PNG.

Stages (``all`` runs them in this order, all but ``engines``; later stages reuse what earlier ones wrote):

  classic   JPEG, WebP, JPEG XL, AVIF lossy sweeps, one file per image → classic_lossy.{json,png}
  ideal     ideal diffcodec curve, per-image KL rate and x̂_0 PSNR → ideal_rd.json (network; cached)
  progressive  diffcodec encode on real images: real vs ideal rate per step, fidelity, time, the
            chunk/margin trade-off → progressive.{json,png}, progressive_strip.npz (100 images)
  rd        rate–distortion: DDPM Figure 5 panels and the RD plot with BD-rates → rd.json,
            rd.png, rd_panels.png (adds bench/results/progressive.json when present)
  lossless  lossless table: VLB, bits-back, PNG, WebP-LL, JPEG XL → lossless_table.{json,png}
  terms     per-timestep terms L_t of the prior, log scale → timestep_terms.{json,png}
  strip     one image at growing sizes: diffcodec slot beside WebP and JPEG XL → strip.{json,png}
  timing    encode/decode, compress/decompress, nll beside the network passes alone (the floor), one
            thread, best of 3 rounds → timing.{json,png} (10 images; --quick 3)
  engines   the network's forward pass through each engine (float32, bf16 autocast, channels-last,
            torch.compile, ONNX Runtime, OpenVINO) at batch 1, 8, 64: speed-up, max |Δε|, bits/dim
            change on 32 images → engines.{json,png} (issue #12; about 10 minutes, compiles; only
            when named)
  photos    the photo prior on the held-out test photographs: lossless (whole photos) against PNG, WebP
            and JPEG XL lossless, lossy (centre crops) against JPEG, WebP, JPEG XL and AVIF, time and
            memory of nll/compress/encode on one photo → photos.{json,png} (issue #14; only when named;
            --prior defaults to the embedded photo prior)
  photos-whole  the photos' lossy comparison on whole photos instead of crops → photos_whole.json
            (issue #14; only when named; about 10-16 minutes per photo, --num N takes the N smallest)
  photos-lossless, photos-timing  recompute only that part of photos.json (same prior and steps),
            keeping the others; each part records its provenance (only when named)
  photos-bound  the whole-photo bound of the test photos under --prior beside PNG, WebP and JPEG XL
            lossless, one entry per prior in photo_bound.{json,png} (the lossless goal's gauge as
            the photo prior trains; 12-15 minutes here; only when named)
  photos-files  the real compress file of each test photo under --prior (the first decoded and
            checked), added to that prior's entry in photo_bound.{json,png} (the lossless goal for a
            prior not yet embedded; 15-20 minutes here; only when named)

Examples:

  python -m bench all                  # 1,000 Fashion-MNIST test images, results in bench/results/
  python -m bench all --quick          # 100 images, coarse sweeps, cached network results: ~1 minute
  python -m bench classic rd --num 200 --out /tmp/b
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from .context import Context
from .provenance import RESULTS

STAGES = ("classic", "ideal", "progressive", "rd", "lossless", "terms", "strip", "timing")
ON_REQUEST = ("engines", "photos", "photos-whole", "photos-lossless", "photos-timing", "photos-bound", "photos-files")  # machine benchmarks that compile and take minutes whatever --quick says: not in ``all``
MODULES = {"classic": "classic", "ideal": "ideal", "progressive": "progressive", "rd": "rd", "lossless": "lossless_table", "terms": "timestep_terms", "strip": "strip", "timing": "timing", "engines": "engines", "photos": "photos", "photos-whole": "photos_whole",
           "photos-lossless": "photos:stage_lossless", "photos-timing": "photos:stage_timing", "photos-bound": "photos:stage_bound",
           "photos-files": "photos:stage_files"}  # module[:function], default stage
QUICK_NUM = 100


def run_stage(name: str, ctx: Context) -> dict:
    module, _, function = MODULES[name].partition(":")
    ctx.log(f"stage {name}")
    return getattr(importlib.import_module(f"bench.{module}"), function or "stage")(ctx)


def parse(argv=None) -> tuple[list[str], Context]:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="+", choices=(*STAGES, *ON_REQUEST, "all"), metavar="STAGE",
                    help=f"one or more of {', '.join(STAGES + ON_REQUEST)}, or all (all but {', '.join(ON_REQUEST)})")
    ap.add_argument("--quick", action="store_true", help=f"a small look: {QUICK_NUM} images (unless --num), coarse quality sweeps")
    ap.add_argument("--num", type=int, default=None, help="the first N images of --data (default 1000, --quick 100)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results/)")
    ap.add_argument("--data", default="fashion-mnist:test", help="data SPEC as in diffcodec (default fashion-mnist:test)")
    ap.add_argument("--prior", default=None, help="prior file (default: the embedded one)")
    ap.add_argument("--steps", type=int, default=None, help="steps of the diffcodec chain (default: the codecs' 100, at most T)")
    ap.add_argument("--spacing", default=None, help="spacing of the chain (default: the codecs' front spacing)")
    ap.add_argument("--strip-index", type=int, default=0, help="image of --data shown in the strip (default 0)")
    ap.add_argument("--recompute", action="store_true", help="recompute network results instead of reusing matching JSON")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    from diffcodec.defaults import CODEC_SPACING, CODEC_STEPS

    num = args.num if args.num is not None else (QUICK_NUM if args.quick else 1000)
    if num < 1:
        ap.error(f"--num must be >= 1, got {num}")
    stages = list(STAGES) if "all" in args.stages else list(dict.fromkeys(args.stages))
    ctx = Context(
        out=args.out,
        data=args.data,
        num=num,
        quick=args.quick,
        recompute=args.recompute,
        steps=args.steps or CODEC_STEPS,
        spacing=args.spacing or CODEC_SPACING.value,
        prior_path=args.prior,
        strip_index=args.strip_index,
        verbose=not args.quiet,
    )
    return stages, ctx


def main(argv=None) -> dict:
    import torch

    torch.set_num_threads(1)  # tiny networks gain little from threads, and the machine is shared
    stages, ctx = parse(argv)
    return {name: run_stage(name, ctx) for name in stages}


if __name__ == "__main__":
    main()
