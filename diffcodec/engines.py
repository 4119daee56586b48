"""How the network's forward pass runs: float32 eager (the reference) or a faster engine.

An engine changes how ε_θ(x_t, t) is computed, never what the prior is: the weights, the config and
the digest are the same, and every output is handed on in float32, as ``Prior.network`` promises.
Engines other than FLOAT32 change the network's round-off (bf16 keeps 8 significant bits in its
matrix products), so the coders, whose encoder and decoder must agree bit for bit, always run
FLOAT32; bits/dim measurements may use a faster engine whose effect on them is measured
(``python -m bench engines``, issue #12).

- FLOAT32: eager float32, as the network module is called.
- BF16: eager under ``torch.autocast(device, bfloat16)`` (convolutions and matrix products in bf16,
  normalizations in float32).
- CHANNELS_LAST / BF16_CHANNELS_LAST: a copy of the network with NHWC weights, inputs made NHWC.
- COMPILE / COMPILE_BF16: ``torch.compile`` (inductor), one graph per input shape
  (``dynamic=False``); the first call at a new batch size compiles (seconds to minutes).

    prior = load_prior()
    fast = with_engine(prior, Engine.BF16)     # a view: same weights, config and digest
    evaluate_nll(fast, images, ...)            # prior itself is unchanged
"""

from __future__ import annotations

import copy
import enum

import torch
from torch import nn

from .prior import Prior


class Engine(str, enum.Enum):
    FLOAT32 = "float32"
    BF16 = "bf16"
    CHANNELS_LAST = "channels-last"
    BF16_CHANNELS_LAST = "bf16-channels-last"
    COMPILE = "compile"
    COMPILE_BF16 = "compile-bf16"

    @property
    def bf16(self) -> bool:
        return self in (Engine.BF16, Engine.BF16_CHANNELS_LAST, Engine.COMPILE_BF16)

    @property
    def channels_last(self) -> bool:
        return self in (Engine.CHANNELS_LAST, Engine.BF16_CHANNELS_LAST)

    @property
    def compiled(self) -> bool:
        return self in (Engine.COMPILE, Engine.COMPILE_BF16)


class EngineNet(nn.Module):
    """``net`` run through ``engine``: same call, (x [N, C, H, W], t [N]) → float32 [N, C or 2C, H, W].

    The wrapped network is a submodule (``inner``), so parameters and device are the original's
    (a channels-last copy for the channels-last engines, which leaves the caller's network alone).
    Autocast is entered inside every call, so the engine also holds on worker threads (autocast state
    is per thread).
    """

    def __init__(self, net: nn.Module, engine: Engine):
        super().__init__()
        self.engine = Engine(engine)
        self.inner = copy.deepcopy(net).to(memory_format=torch.channels_last) if self.engine.channels_last else net
        run = self._eager
        self._run = torch.compile(run, dynamic=False) if self.engine.compiled else run

    def _eager(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.engine.bf16):
            return self.inner(x, t)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.engine.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._run(x, t).float().contiguous()


def with_net(prior: Prior, net: nn.Module) -> Prior:
    """A view of ``prior`` whose network is ``net`` (the same call and outputs: an engine around
    ``prior.net``); config, digest and info are shared and ``prior`` is not changed."""
    view = Prior(prior.config, net=net)
    view.digest, view.info = prior.digest, prior.info
    return view.train(prior.training)


def with_engine(prior: Prior, engine: Engine | str) -> Prior:
    """A view of ``prior`` whose network runs through ``engine`` (FLOAT32: ``prior`` itself).

    Raises ValueError for an unknown engine name.
    """
    try:
        engine = Engine(engine)
    except ValueError:
        raise ValueError(f"unknown engine {engine!r} (expected {', '.join(e.value for e in Engine)})") from None
    return prior if engine is Engine.FLOAT32 else with_net(prior, EngineNet(prior.net, engine))
