"""Shared fixtures: tiny priors (8×8, a few channels, T = 20) that build in milliseconds."""

from __future__ import annotations

import pytest
import torch

from diffcodec.prior import Prior, PriorConfig, VarianceMode
from diffcodec.unet import UNetConfig


def make_tiny_prior(variance: str = "learned", channels: int = 1, size: int = 8, T: int = 20, seed: int = 0) -> Prior:
    """A random tiny prior whose zero-initialised layers are perturbed, so every output is non-trivial."""
    learned = VarianceMode(variance) is VarianceMode.LEARNED
    unet = UNetConfig(
        image_channels=channels,
        image_size=size,
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(size // 2,),
        dropout=0.0,
        learn_variance=learned,
    )
    prior = Prior(PriorConfig(unet=unet, num_timesteps=T, variance=variance))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in prior.net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return prior.eval()


def make_tiny_photo_prior(T: int = 20, seed: int = 0) -> Prior:
    """A random tiny any-size colour prior (per-pixel norms, no attention: fully convolutional), stride 2."""
    unet = UNetConfig(image_channels=3, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(), dropout=0.0, learn_variance=True, norm="channel", mid_attention=False)
    prior = Prior(PriorConfig(unet=unet, num_timesteps=T, variance="learned"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in prior.net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return prior.eval()


@pytest.fixture(autouse=True, scope="session")
def onnx_cache(tmp_path_factory):
    """The commands keep exported ONNX graphs on disk (engines.onnx_graph): here in a folder of the
    test session's own, not the user's ~/.cache."""
    import os

    from diffcodec.engines import ONNX_CACHE_ENV

    folder = tmp_path_factory.mktemp("onnx-cache")
    before = os.environ.get(ONNX_CACHE_ENV)
    os.environ[ONNX_CACHE_ENV] = str(folder)
    yield folder
    if before is None:
        os.environ.pop(ONNX_CACHE_ENV, None)
    else:
        os.environ[ONNX_CACHE_ENV] = before


@pytest.fixture
def one_thread():
    """Tiny nets gain nothing from threads, and on a busy 2-core machine OpenMP barriers make every op wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_prior() -> Prior:
    return make_tiny_prior()


def random_images(n: int, channels: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)


def tiny_bench_context(out, num: int):
    """A bench Context on a tiny prior (digest "ab"*32) and ``num`` random 8×8 images, quick, silent."""
    from bench.context import Context

    prior = make_tiny_prior()
    prior.digest = "ab" * 32
    ctx = Context(out=out, data="tiny", num=num, quick=True, verbose=False)
    ctx.prior = prior  # cached properties: set in place of loading
    ctx.images = random_images(num).numpy()
    return ctx
