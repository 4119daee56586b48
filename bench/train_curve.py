"""Learning curves of held-out bits/dim against training time for a few prior sizes.

Each size trains with `diffcodec train` on Fashion-MNIST (last 1,000 training images held out) for
the same number of steps (batch 64); the held-out VLB of the EMA weights at the codec's default
steps is logged periodically. Runs use one thread (--threads 1): the machine is shared while this
runs, and two OpenMP threads thrash next to another busy process. The runs are budgeted in
steps, and training time on the plot is images seen divided by each size's clean 1-thread throughput from
bench/train_throughput.py (measured side by side with nothing else running).
Results: bench/results/train_curve.json and train_curve.png.

    python bench/train_curve.py --steps 1000          # all sizes, one after another
    python bench/train_curve.py --collect             # only rebuild the JSON/plot from the logs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RUNS = HERE.parent / "runs" / "curve"
SIZES = {
    "S": dict(channels=32, mult="1,2,2", res_blocks=1, eval_every=250),
    "M": dict(channels=32, mult="1,2,2", res_blocks=2, eval_every=250),
    "L": dict(channels=48, mult="1,2,2", res_blocks=2, eval_every=250),
}
COMMON = ["--data", "fashion-mnist:train", "--holdout", "1000", "--eval-images", "64", "--attention", "7",
          "--objective", "hybrid", "--schedule", "cosine", "--batch", "64", "--lr", "4e-4", "--warmup", "200",
          "--ema", "0.999", "--dropout", "0.1", "--device", "cpu", "--threads", "1"]


def run(name: str, steps: int) -> None:
    size = SIZES[name]
    RUNS.mkdir(parents=True, exist_ok=True)
    log = RUNS / f"{name}.jsonl"
    log.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "diffcodec_cli.main", "train", *COMMON, "--out", str(RUNS / f"{name}.safetensors"), "--steps", str(steps),
           "--channels", str(size["channels"]), "--mult", size["mult"],
           "--res-blocks", str(size["res_blocks"]), "--eval-every", str(size["eval_every"]), "--ckpt-every", "500",
           "--eval-log", str(log)]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def clean_throughput() -> dict:
    path = HERE / "results" / "train_throughput.json"
    if not path.exists():
        return {}
    return {name: r["images_per_second_1_thread"] for name, r in json.loads(path.read_text())["sizes"].items()}


def collect() -> dict:
    from diffcodec.checkpoint import load_prior

    clean = clean_throughput()
    result = {"torch": torch.__version__, "objective": "hybrid", "schedule": "cosine", "batch": 64, "sizes": {}}
    for name, size in SIZES.items():
        log = RUNS / f"{name}.jsonl"
        if not log.exists():
            continue
        points = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        prior = load_prior(RUNS / f"{name}.safetensors")
        result["sizes"][name] = {
            "config": {k: v for k, v in size.items() if k != "eval_every"},
            "parameters": sum(p.numel() for p in prior.net.parameters()),
            "clean_images_per_second": clean.get(name),
            "curve": [
                dict({k: p[k] for k in ("step", "images_seen", "heldout_bpd", "heldout_bpd_stderr")},
                     clean_train_minutes=p["images_seen"] / clean[name] / 60 if name in clean else None)
                for p in points
            ],
        }
    (HERE / "results" / "train_curve.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result)
    return result


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in result["sizes"].items():
        c = r["curve"]
        ips = r["clean_images_per_second"]
        label = f"{name}: {r['parameters'] / 1e6:.1f}M params" + (f", {ips:.0f} img/s" if ips else "")
        if ips:
            axes[0].plot([p["clean_train_minutes"] for p in c], [p["heldout_bpd"] for p in c], "o-", label=label)
        axes[1].plot([p["images_seen"] / 1000 for p in c], [p["heldout_bpd"] for p in c], "o-", label=label)
    axes[0].set_xlabel("training time on this CPU, 1 thread (minutes)")
    axes[1].set_xlabel("training images seen (thousands)")
    for ax in axes:
        ax.set_ylabel("held-out bits/dim (VLB, codec steps)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Fashion-MNIST learning curves (hybrid objective, cosine schedule, batch 64)")
    fig.tight_layout()
    fig.savefig(HERE / "results" / "train_curve.png", dpi=120)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--collect", action="store_true")
    args = ap.parse_args()
    if not args.collect:
        for name in args.sizes.split(","):
            t0 = time.time()
            run(name, args.steps)
            print(f"{name}: {time.time() - t0:.0f} s", flush=True)
    print(json.dumps(collect(), indent=1)[:2000])
