"""Ancestral sampling from a prior (DDPM Algorithm 2) on any respaced schedule."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .defaults import Engine
from .diffusion import model_to_pixels
from .engines import with_engine
from .prior import Prior
from .schedule import Schedule


@torch.no_grad()
def sample(
    prior: Prior,
    num: int,
    schedule: Schedule | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    engine: Engine | str = Engine.FLOAT32,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Draw ``num`` images: x_K ~ N(0, I), x_{k−1} = μ_θ + σ_k z for k = K..2, output μ_θ(x_1) rounded.

    ``engine``: how the network runs (diffcodec.engines; AUTO: the measured default for the prior's
    device; ONNX Runtime on torch's current thread count). Engines other than float32 change the
    network's round-off, so the same seed may give slightly different samples.
    ``size`` (H, W): another image size, for an any-size prior (Prior.any_size).
    Returns [num, C, H, W] uint8 on the CPU.
    """
    if num < 1:
        raise ValueError(f"number of samples must be >= 1, got {num}")
    schedule = schedule if schedule is not None else prior.base_schedule
    prior = with_engine(prior, engine, threads=torch.get_num_threads(), cache=True)
    device = next(prior.parameters()).device
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    c, h, w = prior.image_shape
    if size is not None:
        if not prior.any_size and tuple(size) != (h, w):
            raise ValueError(f"this prior draws {w}x{h} images only (it is not fully convolutional)")
        h, w = size
    x = torch.randn((num, c, h, w), generator=gen).to(device)
    for j in tqdm(range(schedule.num_steps - 1, -1, -1), desc="sampling", disable=not progress, unit="step"):
        rev = prior.reverse(x, torch.full((num,), j, device=device, dtype=torch.long), schedule)
        if j == 0:
            x = rev.mean
        else:
            z = torch.randn(x.shape, generator=gen).to(device)
            x = rev.mean + torch.exp(0.5 * rev.log_variance) * z
    return model_to_pixels(x).cpu()
