"""Network throughput on this CPU, side by side in one run: forward passes and training steps.

For each candidate prior size (bench/train_curve.py's SIZES) and for the embedded default prior:
forward-pass images/s at batch 1 and 64 (no autograd), and hybrid-objective training images/s at
batch 64 with 2 threads (plain, and with channels_last memory format) and with 1 thread. For the
embedded default prior also the training engines of issue #12 at batch 64, 2 threads: float32,
``--precision bf16`` (autocast), and the network under ``torch.compile`` (inductor) in float32 and
in bf16 (compile time reported apart: the warm-up steps). Every
figure is a median over repeats after warm-up, all in one process. Run it on an otherwise idle
machine: with another busy process on the 2 cores, 2-thread OpenMP regions thrash (measured 40×
slower per step), which is why the long training runs here use --threads 1.

    python bench/train_throughput.py                  # → bench/results/train_throughput.json
    python bench/train_throughput.py --engines-only   # only the training engines (updates that key)
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from diffcodec.checkpoint import default_prior_path, load_prior
from diffcodec.prior import PriorConfig
from diffcodec.train import TrainConfig, Trainer
from diffcodec.unet import UNetConfig

HERE = Path(__file__).resolve().parent
SIZES = {
    "S": dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1),
    "M": dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2),
    "L": dict(base_channels=48, channel_mult=(1, 2, 2), num_res_blocks=2),
}


def timed(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def forward_ips(net, shape, batch: int) -> float:
    x, t = torch.randn(batch, *shape), torch.full((batch,), 500.0)
    return batch / timed(lambda: net(x, t), repeats=20 if batch == 1 else 8)


def train_ips(config: PriorConfig, images: np.ndarray, channels_last: bool = False, threads: int = 2,
              precision: str = "float32", compiled: bool = False, repeats: int = 8) -> float:
    torch.set_num_threads(threads)
    trainer = Trainer(config, TrainConfig(objective="hybrid", batch_size=64, precision=precision), images, torch.device("cpu"))
    if channels_last:
        trainer.prior.net.to(memory_format=torch.channels_last)
    if compiled:  # the network the training step calls, behind an inductor graph (forward and backward)
        trainer.net = torch.compile(trainer.net)
    ips = 64 / timed(trainer.train_step, repeats=repeats)
    torch.set_num_threads(2)
    return ips


def training_engines(config: PriorConfig, images: np.ndarray, repeats: int = 12) -> dict:
    """Training images/s at batch 64, 2 threads, per engine, plus the compiled rows' warm-up seconds."""
    out = {}
    for name, kw in {"float32": {}, "bf16": {"precision": "bf16"}, "compile": {"compiled": True},
                     "compile-bf16": {"compiled": True, "precision": "bf16"}}.items():
        t0 = time.perf_counter()
        ips = train_ips(config, images, repeats=repeats, **kw)
        out[name] = {"images_per_second": ips, "wall_seconds": time.perf_counter() - t0}
        print("  train", name, json.dumps(out[name]), flush=True)
    for row in out.values():
        row["speedup"] = row["images_per_second"] / out["float32"]["images_per_second"]
    return out


def _images() -> np.ndarray:
    """The random 28×28 training images every figure here uses (throughput does not depend on content)."""
    return np.random.default_rng(0).integers(0, 256, (512, 1, 28, 28), dtype=np.uint8)


def main() -> dict:
    images = _images()
    torch.set_num_threads(2)
    result = {"torch": torch.__version__, "threads": 2, "cpu": platform.processor() or platform.machine(),
              "sizes": {}}
    configs = {name: PriorConfig(unet=UNetConfig(attention_resolutions=(7,), learn_variance=True, **kw), schedule="cosine")
               for name, kw in SIZES.items()}
    if default_prior_path().exists():
        default = load_prior()
        configs["default"] = default.config
        result["default_digest"] = default.digest
    for name, config in configs.items():
        trainer = Trainer(config, TrainConfig(), images, torch.device("cpu"))
        net = trainer.prior.net.eval()
        row = {
            "parameters": sum(p.numel() for p in net.parameters()),
            "forward_images_per_second_batch1": forward_ips(net, trainer.prior.image_shape, 1),
            "forward_images_per_second_batch64": forward_ips(net, trainer.prior.image_shape, 64),
            "images_per_second": train_ips(config, images),
            "images_per_second_channels_last": train_ips(config, images, channels_last=True),
            "images_per_second_1_thread": train_ips(config, images, threads=1),
        }
        result["sizes"][name] = row
        print(name, json.dumps(row), flush=True)
    if "default" in configs:
        result["training_engines_default"] = training_engines(configs["default"], images)
    (HERE / "results" / "train_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def engines_only() -> dict:
    """Measure only the training engines of the default prior and store them in the existing JSON."""
    path = HERE / "results" / "train_throughput.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    torch.set_num_threads(2)
    default = load_prior()
    result["training_engines_default"] = training_engines(default.config, _images())
    result["training_engines_digest"] = default.digest
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    import sys

    engines_only() if "--engines-only" in sys.argv[1:] else main()
