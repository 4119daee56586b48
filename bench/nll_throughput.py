"""nll throughput: image-steps per second of `diffcodec nll` against a naive per-timestep loop.

All paths evaluate the same prior on the same Fashion-MNIST test images over the same K-step
schedule with the same noise, so their bits/dim agree to float32 round-off (recorded). The naive loop
is the reference ``calc_bpd_loop`` pattern: images in batches of ``--batch``, and for each step one
network call on the batch under ``torch.no_grad``, terms from ``pair_terms``; it runs with torch's
default thread count, and once more with one thread for reference. The nll path is
``diffcodec.likelihood.evaluate_nll`` at its defaults (groups of ``--batch`` images, several steps
per network call, inference mode, one group per worker thread with one intra-op thread each). Rounds
alternate between the paths so that background load hits all alike; the median round is reported
with the load average, since a busy 2-core machine slows code that splits every operation across
threads (OpenMP barriers wait for descheduled threads) far more than independent workers.

    python bench/nll_throughput.py            # writes bench/results/nll_throughput.{json,png}

Prior: the embedded default (diffcodec/priors/default.safetensors) when present, otherwise a prior
of the default configuration, PriorConfig(), with random weights (throughput does not depend on
them). Pause other CPU jobs while measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffcodec.checkpoint import default_prior_path, load_prior  # noqa: E402
from diffcodec.data import load_images  # noqa: E402
from diffcodec.defaults import CODEC_SPACING  # noqa: E402
from diffcodec.diffusion import pixels_to_model, prior_kl  # noqa: E402
from diffcodec.likelihood import DEFAULT_BATCH, DEFAULT_PAIRS_PER_CALL, evaluate_nll, group_generator  # noqa: E402
from diffcodec.prior import Prior, PriorConfig  # noqa: E402
from diffcodec.terms import pair_terms  # noqa: E402
from diffcodec.units import nats_to_bpd  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def naive_loop(prior: Prior, pixels: torch.Tensor, schedule, batch: int, seed: int = 0) -> np.ndarray:
    """[N] bits/dim, one network call per step per batch (the calc_bpd_loop pattern), nll's noise."""
    out = []
    for g, start in enumerate(range(0, len(pixels), batch)):
        gen = group_generator(seed, g)  # the noise evaluate_nll draws for this group
        x0 = pixels_to_model(pixels[start : start + batch], torch.float64)
        total = prior_kl(x0, float(schedule.alphas_cumprod[-1])).sum((1, 2, 3))
        for j in range(schedule.num_steps):
            noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
            with torch.no_grad():
                total = total + pair_terms(prior, x0, torch.full((len(x0),), j, dtype=torch.long), noise, schedule).nats
        out.append(nats_to_bpd(total, prior.num_dims).numpy())
    return np.concatenate(out)


def one_thread(fn):
    def wrapped(*args):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args)
        finally:
            torch.set_num_threads(threads)

    return wrapped


def random_default_prior() -> Prior:
    """PriorConfig() with its zero-initialised layers given small random weights, so ε and v are not 0."""
    torch.manual_seed(0)
    prior = Prior(PriorConfig())
    with torch.no_grad():
        for p in prior.net.parameters():
            if not p.any():
                p.normal_(0.0, 1e-2)
    return prior.eval()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2 * DEFAULT_BATCH, help="images evaluated per round")
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="images per batch (all paths)")
    ap.add_argument("--steps", type=int, default=24, help="K; throughput per image-step hardly depends on it")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "nll_throughput.json")
    args = ap.parse_args()

    if default_prior_path().exists():
        prior, which = load_prior(), "embedded default prior (diffcodec/priors/default.safetensors)"
    else:
        prior, which = random_default_prior(), "PriorConfig() with random weights (no embedded prior yet)"
    try:
        pixels = torch.from_numpy(load_images("fashion-mnist:test").images[: args.images])
        data = f"fashion-mnist:test, first {args.images}"
    except ValueError:
        pixels = torch.randint(0, 256, (args.images, *prior.image_shape), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
        data = f"{args.images} uniform random images"
    schedule = prior.schedule(args.steps, CODEC_SPACING)
    work = len(pixels) * schedule.num_steps  # image-steps per measurement

    def run_naive(px=pixels, sch=schedule):
        return naive_loop(prior, px, sch, args.batch)

    def run_nll(px=pixels, sch=schedule):
        return evaluate_nll(prior, px, sch, batch=args.batch, seed=0).image_bpd

    paths = {"naive_loop": run_naive, "naive_loop_1_thread": one_thread(run_naive), "nll": run_nll}
    rates = {name: [] for name in paths}
    bpd = {}
    load_before = os.getloadavg()
    for fn in (run_naive, run_nll):  # warm-up (allocator, oneDNN primitive caches), not timed
        fn(pixels[: 2 * args.batch], prior.schedule(4, CODEC_SPACING))
    for r in range(args.rounds):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            bpd[name] = fn()
            rates[name].append(work / (time.perf_counter() - t0))
            print(f"round {r + 1}: {name:<20} {rates[name][-1]:8.1f} image-steps/s", file=sys.stderr)
    load_after = os.getloadavg()

    median = {name: statistics.median(v) for name, v in rates.items()}
    record = {
        "benchmark": "nll throughput, image-steps per second (higher is better)",
        "command": "python bench/nll_throughput.py",
        "prior": which,
        "prior_digest": prior.digest,
        "parameters": sum(p.numel() for p in prior.net.parameters()),
        "image_shape": list(prior.image_shape),
        "data": data,
        "steps": schedule.num_steps,
        "spacing": CODEC_SPACING.value,
        "images": len(pixels),
        "images_per_batch": args.batch,
        "nll_pairs_per_call": DEFAULT_PAIRS_PER_CALL,
        "nll_workers": torch.get_num_threads(),
        "naive_pairs_per_call": args.batch,
        "rounds": args.rounds,
        "image_steps_per_s": {name: [round(x, 2) for x in v] for name, v in rates.items()},
        "median_image_steps_per_s": {name: round(v, 2) for name, v in median.items()},
        "speedup": round(median["nll"] / median["naive_loop"], 3),
        "speedup_vs_naive_1_thread": round(median["nll"] / median["naive_loop_1_thread"], 3),
        "total_bpd": {name: float(np.mean(v)) for name, v in bpd.items()},
        "max_abs_diff_image_bpd": float(max(np.max(np.abs(v - bpd["nll"])) for v in bpd.values())),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "loadavg_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("median_image_steps_per_s", "speedup", "max_abs_diff_image_bpd")}))
    plot(record, args.out.with_suffix(".png"))


def plot(record: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    names = list(record["median_image_steps_per_s"])
    values = [record["median_image_steps_per_s"][n] for n in names]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([n.replace("_", " ").replace("loop ", "loop\n") for n in names], values, color=["#999999", "#bbbbbb", "#1f77b4"][: len(names)])
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    ax.set_ylabel("image-steps / s")
    ax.set_title(f"nll vs naive loop: {record['speedup']:.2f}× ({record['threads']} threads, {record['steps']} steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
