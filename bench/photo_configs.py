"""Width, depth and crop size of the photo prior from learning curves (issue #14):
``python -m bench.photo_configs [--minutes M] [--only NAME,…] [--collect]``.

Every configuration trains from scratch for the same wall-clock budget (``--minutes``, default 14)
with ``diffcodec train`` in its own process on this CPU, one run after another (two threads, bf16
autocast, the shipped prior's other flags: photos:train with the last 4 photos held out, random
flips, Adam 4e-4 with 200 warm-up steps, EMA 0.999). Each run logs the held-out bits/dim of its EMA
weights on the trainer's own fixed crops of the held-out photos (at the run's crop size, so the
64-px run's set is not the others'). Every run's final prior is then measured on one common set:
16 fixed 64×64 crops of the 4 held-out photos, exact VLB over the codecs' 100 steps, float32, two
threads, beside the embedded prior and ``bench/checkpoints/photo.state`` (each labelled with its step).

    base     ch 32, multipliers 1,2,2,2, 2 residual blocks, 32-px crops, batch 64 (the shipped prior)
    wide     ch 48 (about 2.2× the multiply-adds)
    deep     3 residual blocks per level
    crop64   64-px crops, batch 16 (the same pixels per step)

Writes ``photo_configs.json`` and ``.png``. The runs' checkpoints go to ``runs/photo_configs/``
(not committed). A budget of minutes compares configurations early in training, when smaller
networks are favoured; the common-set figures of the two longer-trained states show how far the
shipped configuration moves with hours.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .provenance import RESULTS, provenance, write_json

RUNS = Path(__file__).resolve().parent.parent / "runs" / "photo_configs"
STATE = Path(__file__).resolve().parent / "checkpoints" / "photo.state"
THREADS = 2
COMMON_CROP, COMMON_CROPS, STEPS = 64, 16, 100
SHARED = ["--data", "photos:train", "--holdout", "4", "--attention", "", "--norm", "channel", "--no-mid-attention",
          "--flip", "--lr", "4e-4", "--warmup", "200", "--precision", "bf16", "--threads", str(THREADS),
          "--engine", "float32", "--device", "cpu", "--steps", "1000000", "--ckpt-every", "100"]
CONFIGS = {
    "base": dict(crop=32, batch=64, channels=32, mult="1,2,2,2", res_blocks=2, eval_images=64, eval_every=150),
    "wide": dict(crop=32, batch=64, channels=48, mult="1,2,2,2", res_blocks=2, eval_images=64, eval_every=75),
    "deep": dict(crop=32, batch=64, channels=32, mult="1,2,2,2", res_blocks=3, eval_images=64, eval_every=100),
    "crop64": dict(crop=64, batch=16, channels=32, mult="1,2,2,2", res_blocks=2, eval_images=16, eval_every=150),
}


def command(name: str, minutes: float) -> list[str]:
    c = CONFIGS[name]
    return [sys.executable, "-m", "diffcodec_cli.main", "train", *SHARED, "--time-limit", str(60 * minutes),
            "--crop", str(c["crop"]), "--batch", str(c["batch"]), "--channels", str(c["channels"]), "--mult", c["mult"],
            "--res-blocks", str(c["res_blocks"]), "--eval-images", str(c["eval_images"]),
            "--eval-every", str(c["eval_every"]), "--out", str(RUNS / f"{name}.safetensors"),
            "--eval-log", str(RUNS / f"{name}.jsonl")]


def train(name: str, minutes: float) -> float:
    RUNS.mkdir(parents=True, exist_ok=True)
    for suffix in (".jsonl", ".safetensors", ".safetensors.state"):
        (RUNS / f"{name}{suffix}").unlink(missing_ok=True)
    cmd = command(name, minutes)
    print(" ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t0


def common_set() -> np.ndarray:
    """[16, 3, 64, 64] uint8: fixed crops (seed 0) of the 4 photos every run holds out."""
    from diffcodec.photos import load_photos
    from diffcodec.train import CropPool

    photos = [p.image for p in load_photos("train")][-4:]
    return CropPool(photos, COMMON_CROP).draw(COMMON_CROPS, torch.Generator().manual_seed(0)).numpy()


def common_bpd(prior, images: np.ndarray) -> tuple[float, float]:
    """Exact VLB over the codecs' steps (mean bits/dim and its standard error over the crops)."""
    from diffcodec.defaults import CODEC_SPACING
    from diffcodec.terms import compute_terms

    schedule = prior.schedule(min(STEPS, prior.config.num_timesteps), CODEC_SPACING)
    with torch.inference_mode():
        bpd = compute_terms(prior, torch.from_numpy(images), schedule, torch.Generator().manual_seed(0)).total_bpd()
    return float(bpd.mean()), float(bpd.std() / np.sqrt(len(bpd)))


def state_prior(path: Path):
    """The EMA weights of a training state as a prior."""
    from diffcodec.prior import Prior
    from diffcodec.train import read_train_state

    tensors, meta, prior_config, _ = read_train_state(path)
    prior = Prior(prior_config).eval()
    prior.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    return prior, int(meta.get("step", -1))


def collect(minutes: float, wall: dict[str, float]) -> dict:
    from diffcodec.checkpoint import load_prior

    torch.set_num_threads(THREADS)
    images = common_set()
    runs = {}
    for name, cfg in CONFIGS.items():
        log = RUNS / f"{name}.jsonl"
        if not log.exists():
            continue
        points = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        prior = load_prior(RUNS / f"{name}.safetensors").eval()
        bpd, err = common_bpd(prior, images)
        last = points[-1]
        runs[name] = {
            "config": cfg, "command": " ".join(command(name, minutes)[2:]),
            "parameters": sum(p.numel() for p in prior.net.parameters()),
            "steps": last["step"], "images_seen": last["images_seen"], "train_seconds": last["train_seconds"],
            "pixels_per_second": last["images_seen"] * cfg["crop"] ** 2 / last["train_seconds"],
            "wall_seconds": wall.get(name),
            "common_bpd": bpd, "common_bpd_stderr": err,
            "curve": [{k: p[k] for k in ("step", "images_seen", "train_seconds", "heldout_bpd", "heldout_bpd_stderr")}
                      for p in points],
        }
        print(f"{name}: {last['step']} steps, common set {bpd:.4f} ± {err:.4f} bits/dim", flush=True)
    reference = {}
    shipped = load_prior("photo").eval()
    reference[f"shipped (step {(shipped.info or {}).get('step', 0):,})"] = common_bpd(shipped, images)
    if STATE.exists():
        prior, step = state_prior(STATE)
        reference[f"photo.state (step {step:,})"] = common_bpd(prior, images)
    for k, (b, e) in reference.items():
        print(f"{k}: common set {b:.4f} ± {e:.4f} bits/dim", flush=True)
    return {"minutes": minutes, "threads": THREADS,
            "common_set": f"{COMMON_CROPS} fixed {COMMON_CROP}x{COMMON_CROP} crops (seed 0) of the 4 held-out photos, "
                          f"exact VLB over {STEPS} codec steps, float32",
            "runs": runs, "reference": {k: {"common_bpd": b, "common_bpd_stderr": e} for k, (b, e) in reference.items()}}


def plot(body: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(body["runs"])
    for name, r in body["runs"].items():
        c = r["curve"]
        label = f"{name}: {r['parameters'] / 1e6:.2f}M params, {r['pixels_per_second'] / 1e3:.0f}k px/s"
        axes[0].plot([p["train_seconds"] / 60 for p in c], [p["heldout_bpd"] for p in c], "o-", label=label)
    axes[0].set_xlabel("training time on this CPU, 2 threads (minutes)")
    axes[0].set_ylabel("held-out bits/dim (the run's own crops)")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    refs = body["reference"]
    labels = names + list(refs)
    vals = [body["runs"][n]["common_bpd"] for n in names] + [r["common_bpd"] for r in refs.values()]
    errs = [body["runs"][n]["common_bpd_stderr"] for n in names] + [r["common_bpd_stderr"] for r in refs.values()]
    colors = [f"C{i}" for i in range(len(names))] + ["0.5"] * len(refs)
    axes[1].barh(range(len(labels)), vals, xerr=errs, color=colors)
    axes[1].set_yticks(range(len(labels)), [f"{n} ({body['minutes']:g} min)" if n in body["runs"] else n for n in labels],
                       fontsize=8)
    axes[1].set_xlim(min(vals) - 0.3, max(vals) + 0.2)
    axes[1].set_xlabel("bits/dim, common set (16 fixed 64-px held-out crops)")
    axes[1].invert_yaxis()
    axes[1].grid(alpha=0.3, axis="x")
    fig.suptitle(f"Photo prior configurations, {body['minutes']:g} minutes of training each (bf16, 2 threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.photo_configs", description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=14.0, help="training budget of each configuration (wall-clock)")
    ap.add_argument("--only", default=",".join(CONFIGS), help="configurations to train (comma-separated)")
    ap.add_argument("--collect", action="store_true", help="only measure the runs already in runs/photo_configs/")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    wall = {}
    if not args.collect:
        for name in args.only.split(","):
            wall[name] = train(name, args.minutes)
    body = {"stage": "photo_configs", **collect(args.minutes, wall), "provenance": provenance(None, 0, "photos:train")}
    write_json(args.out / "photo_configs.json", body)
    plot(body, args.out / "photo_configs.png")
    print(f"wrote {args.out / 'photo_configs.json'}")


if __name__ == "__main__":
    main()
