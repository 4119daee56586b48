"""Network throughput on this CPU, side by side in one run: forward passes and training steps.

For each candidate prior size (bench/train_curve.py's SIZES) and for the embedded default prior:
forward-pass images/s at batch 1 and 64 (no autograd), and hybrid-objective training images/s at
batch 64 with 2 threads (plain, and with channels_last memory format) and with 1 thread. Every
figure is a median over repeats after warm-up, all in one process. Run it on an otherwise idle
machine: with another busy process on the 2 cores, 2-thread OpenMP regions thrash (measured 40×
slower per step), which is why the long training runs here use --threads 1.

    python bench/train_throughput.py   # → bench/results/train_throughput.json
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


def train_ips(config: PriorConfig, images: np.ndarray, channels_last: bool = False, threads: int = 2) -> float:
    torch.set_num_threads(threads)
    trainer = Trainer(config, TrainConfig(objective="hybrid", batch_size=64), images, torch.device("cpu"))
    if channels_last:
        trainer.prior.net.to(memory_format=torch.channels_last)
    ips = 64 / timed(trainer.train_step, repeats=8)
    torch.set_num_threads(2)
    return ips


def main() -> dict:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (512, 1, 28, 28), dtype=np.uint8)
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
    (HERE / "results" / "train_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
