"""nll throughput: image-steps per second of `diffcodec nll` against a naive per-timestep loop.

All paths evaluate the same prior on the same Fashion-MNIST test images over the same K-step
schedule with the same noise, so their bits/dim agree to float32 round-off (recorded). The naive loop
is the reference ``calc_bpd_loop`` pattern: images in batches of ``--batch``, and for each step one
network call on the batch under ``torch.no_grad``, terms from ``pair_terms``; it runs with torch's
default thread count, and once more with one thread for reference. The nll path is
``diffcodec.likelihood.evaluate_nll`` at its defaults (groups of ``--batch`` images, several steps
per network call, inference mode, one group per worker thread with one intra-op thread each). The
network alone (fixed inputs, no terms, no noise; a few worker and batch layouts) gives the ceiling:
every path makes one network evaluation per image-step, so ceiling / naive bounds the speed-up that
any float32 nll path could reach over the naive loop. Rounds alternate between the paths so that
background load hits all alike. Each path's best round is the headline (as timeit advises: slower
rounds are other processes' doing), the median is recorded with the load average, since a busy
2-core machine slows code that splits every operation across threads (OpenMP barriers wait for
descheduled threads) far more than independent workers.

    python bench/nll_throughput.py            # about three minutes; writes bench/results/nll_throughput.{json,png}

Prior: the embedded default (diffcodec/priors/default.safetensors) when present, otherwise a prior
of the default configuration, PriorConfig(), with random weights (throughput does not depend on
them). Pause other CPU jobs while measuring.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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


def naive_loop(prior: Prior, pixels: torch.Tensor, schedule, batch: int, deadline: float = math.inf, seed: int = 0):
    """The calc_bpd_loop pattern: per batch, one network call per step. → ([N] bits/dim, image-steps done).

    Uses the noise evaluate_nll draws (group g's generator for batch g). Stops after the network call
    that passes ``deadline`` (time.perf_counter()); bits/dim then covers only finished batches.
    """
    out, done = [], 0
    for g, start in enumerate(range(0, len(pixels), batch)):
        gen = group_generator(seed, g)
        x0 = pixels_to_model(pixels[start : start + batch], torch.float64)
        total = prior_kl(x0, float(schedule.alphas_cumprod[-1])).sum((1, 2, 3))
        for j in range(schedule.num_steps):
            noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
            with torch.no_grad():
                total = total + pair_terms(prior, x0, torch.full((len(x0),), j, dtype=torch.long), noise, schedule).nats
            done += len(x0)
            if time.perf_counter() > deadline:
                return np.concatenate(out) if out else np.zeros(0), done
        out.append(nats_to_bpd(total, prior.num_dims).numpy())
    return np.concatenate(out), done


def nll_path(prior: Prior, pixels: torch.Tensor, schedule, batch: int, deadline: float = math.inf):
    """evaluate_nll at its defaults, one chunk (a group per worker) at a time until ``deadline``."""
    chunk = batch * torch.get_num_threads()
    out, done = [], 0
    for start in range(0, len(pixels), chunk):
        res = evaluate_nll(prior, pixels[start : start + chunk], schedule, batch=batch, seed=0)
        out.append(res.image_bpd)
        done += res.num_images * res.num_steps
        if time.perf_counter() > deadline:
            break
    return np.concatenate(out), done


def network_ceiling(prior: Prior, schedule, pairs: int, workers: int, deadline: float) -> int:
    """The network alone, no terms and no noise: ``workers`` threads (sharing torch's threads) run
    forward passes of ``pairs`` (image, step) inputs until ``deadline``. → image-steps done.

    Every nll path must make one network evaluation per image-step, so this rate bounds any of them
    (in float32, on this network) from above; the naive loop's rate over it bounds the possible gain.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((pairs, *prior.image_shape), generator=gen)
    t = torch.as_tensor(schedule.timesteps)[torch.randint(0, schedule.num_steps, (pairs,), generator=gen)]

    def work(_):
        done = 0
        with torch.inference_mode():
            while time.perf_counter() <= deadline:
                prior.net(x, t)
                done += pairs
        return done

    threads = torch.get_num_threads()
    torch.set_num_threads(threads // workers)
    try:
        with ThreadPoolExecutor(workers) as pool:
            return sum(pool.map(work, range(workers)))
    finally:
        torch.set_num_threads(threads)


def flops_per_image_step(prior: Prior, schedule) -> float:
    """Floating-point operations of one network evaluation (torch's FLOP counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, *prior.image_shape))
    t = torch.as_tensor(schedule.timesteps[:1])
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        prior.net(x, t)
    return float(counter.get_total_flops())


def one_thread(fn):
    def wrapped(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
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
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, DEFAULT_BATCH], help="images per batch to compare at")
    ap.add_argument("--steps", type=int, default=24, help="K; throughput per image-step hardly depends on it")
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement (stops after the call that passes it)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", type=Path, default=RESULTS / "nll_throughput.json")
    ap.add_argument("--note", default="", help="conditions of the run, recorded in the JSON (e.g. what else was running)")
    args = ap.parse_args()

    if default_prior_path().exists():
        prior, which = load_prior(), "embedded default prior (diffcodec/priors/default.safetensors)"
    else:
        prior, which = random_default_prior(), "PriorConfig() with random weights (no embedded prior yet)"
    try:
        pixels, data = torch.from_numpy(load_images("fashion-mnist:test").images[:256]), "fashion-mnist:test"
    except ValueError:
        gen = torch.Generator().manual_seed(0)
        pixels, data = torch.randint(0, 256, (256, *prior.image_shape), generator=gen, dtype=torch.uint8), "uniform random images"
    schedule = prior.schedule(args.steps, CODEC_SPACING)

    # Same figures from both paths (same noise, one batch each): float32 round-off only.
    check = pixels[: 2 * DEFAULT_BATCH]
    bpd_naive, _ = naive_loop(prior, check, schedule, DEFAULT_BATCH)
    bpd_nll = evaluate_nll(prior, check, schedule, batch=DEFAULT_BATCH, seed=0).image_bpd
    max_diff = float(np.max(np.abs(bpd_naive - bpd_nll)))

    paths = {}
    for b in args.batches:
        paths[f"naive_loop/batch{b}"] = lambda d, b=b: naive_loop(prior, pixels, schedule, b, d)[1]
        paths[f"nll/batch{b}"] = lambda d, b=b: nll_path(prior, pixels, schedule, b, d)[1]
    workers = torch.get_num_threads()
    for pairs, w in [(DEFAULT_PAIRS_PER_CALL, workers), (128, workers), (128, 1)]:
        paths[f"network_only/{w}x{workers // w}thread/pairs{pairs}"] = lambda d, p=pairs, w=w: network_ceiling(prior, schedule, p, w, d)
    b = args.batches[-1]
    paths[f"naive_loop_1_thread/batch{b}"] = one_thread(lambda d: naive_loop(prior, pixels, schedule, b, d)[1])
    rates = {name: [] for name in paths}
    loads = []
    load_before = os.getloadavg()
    for fn in paths.values():  # warm-up (allocator, oneDNN primitive caches), not timed
        fn(time.perf_counter() + 0.5)
    for r in range(args.rounds):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            done = fn(t0 + args.seconds)
            rates[name].append(done / (time.perf_counter() - t0))
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1}: {name:<28} {rates[name][-1]:8.1f} image-steps/s", file=sys.stderr)
    load_after = os.getloadavg()

    median = {name: round(statistics.median(v), 2) for name, v in rates.items()}
    best = {name: round(max(v), 2) for name, v in rates.items()}
    flops = flops_per_image_step(prior, schedule)
    ceiling = max(v for name, v in best.items() if name.startswith("network_only"))
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
        "nll_pairs_per_call": DEFAULT_PAIRS_PER_CALL,
        "nll_workers": torch.get_num_threads(),
        "naive_pairs_per_call": "the batch",
        "seconds_per_measurement": args.seconds,
        "rounds": args.rounds,
        "image_steps_per_s": {name: [round(x, 2) for x in v] for name, v in rates.items()},
        "best_image_steps_per_s": best,
        "median_image_steps_per_s": median,
        "speedup": {f"batch{b}": round(best[f"nll/batch{b}"] / best[f"naive_loop/batch{b}"], 3) for b in args.batches},
        "speedup_median": {f"batch{b}": round(median[f"nll/batch{b}"] / median[f"naive_loop/batch{b}"], 3) for b in args.batches},
        "max_abs_diff_image_bpd": max_diff,
        "network_gflop_per_image_step": round(flops / 1e9, 4),
        "network_only_ceiling_image_steps_per_s": ceiling,
        "network_only_ceiling_gflops": round(ceiling * flops / 1e9, 1),
        "fraction_of_ceiling": {name: round(best[name] / ceiling, 3) for name in best},
        "largest_possible_speedup": {f"batch{b}": round(ceiling / best[f"naive_loop/batch{b}"], 3) for b in args.batches},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "loadavg_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "loadavg_1min_per_measurement": [round(x, 2) for x in loads],
        "python": platform.python_version(),
        "note": args.note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("best_image_steps_per_s", "speedup", "speedup_median", "largest_possible_speedup", "max_abs_diff_image_bpd")}))
    plot(record, args.out.with_suffix(".png"))


def plot(record: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    names = list(record["best_image_steps_per_s"])
    values = [record["best_image_steps_per_s"][n] for n in names]
    colors = ["#1f77b4" if n.startswith("nll") else "#2ca02c" if n.startswith("network") else "#999999" for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar([n.replace("/", "\n").replace("_", " ") for n in names], values, color=colors)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    ax.set_ylabel("image-steps / s (best round)")
    ax.tick_params(axis="x", labelsize=8)
    gains = ", ".join(f"{k}: {v:.2f}×" for k, v in record["speedup"].items())
    ax.set_title(f"nll vs naive loop ({gains}; {record['threads']} threads)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
