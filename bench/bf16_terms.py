"""``python -m bench.bf16_terms``: where bf16 autocast's extra bits go, term by term (issue #12).

Every term of the prior's full T-step chain (compute_terms, the same seeded noise for both engines) on
the first N test images (default 32), with the network in float32 eager and under bf16 autocast; the
change of the total bound if bf16 ran only at timesteps above a cut (float32 at and below it), for a
few cuts. The mixed engine's cut (t ≤ T/100 in float32, defaults.MIXED_FLOAT32_FRACTION) comes from
this table. Writes ``bf16_terms.json`` in ``--out`` (about 6 minutes for 32 images on two threads).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from .provenance import RESULTS, write_json

CUTS = (0, 1, 2, 5, 10, 20, 50, 100)


def run(num: int, data: str) -> dict:
    from diffcodec.checkpoint import load_prior
    from diffcodec.data import load_images
    from diffcodec.engines import with_engine
    from diffcodec.terms import compute_terms

    prior = load_prior().eval()
    images = np.asarray(load_images(data).images[:num])
    schedule = prior.base_schedule
    terms, seconds = {}, {}
    for engine in ("float32", "bf16"):
        t0 = time.perf_counter()
        with torch.no_grad():
            terms[engine] = compute_terms(with_engine(prior, engine), images, schedule, torch.Generator().manual_seed(0))
        seconds[engine] = time.perf_counter() - t0
    f32, b16 = (terms[e].step_nats.mean(0).numpy() for e in ("float32", "bf16"))  # [T], column k-1 = step at t = k
    total = float(f32.sum() + terms["float32"].prior_nats.mean())
    diff = b16 - f32
    return {
        "prior_digest": prior.digest, "data": data, "images": num, "T": int(schedule.num_steps),
        "total_bpd_float32": float(terms["float32"].total_bpd().mean()),
        "total_bpd_bf16": float(terms["bf16"].total_bpd().mean()),
        "bf16_everywhere_rel_change": float(diff.sum() / total),
        "share_of_change_at_t1": float(diff[0] / diff.sum()),
        "rel_change_with_bf16_only_above": {str(c): float(diff[c:].sum() / total) for c in CUTS},
        "term_change_nats_first_20": [float(x) for x in diff[:20]],
        "seconds": seconds, "threads": torch.get_num_threads(),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bf16_terms", description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=32)
    ap.add_argument("--data", default="fashion-mnist:test")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    out = run(args.num, args.data)
    write_json(args.out / "bf16_terms.json", out)
    print({k: v for k, v in out.items() if k != "term_change_nats_first_20"})


if __name__ == "__main__":
    main()
