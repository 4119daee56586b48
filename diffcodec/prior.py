"""The prior: network + schedule + variance mode → p_θ(x_{k−1} | x_k) as mean and log-variance.

Reverse step k (1..K, array index k−1) of a possibly respaced schedule:
x̂_0 = (x_k − √(1 − ᾱ_k) ε_θ(x_k, S_k))/√ᾱ_k (clipped to [−1, 1] if the config says so),
μ_θ = c1_k·x̂_0 + c2_k·x_k, and log σ²_k from the variance mode:

- SMALL:   log β̃_k (k = 1 uses β̃_2);
- LARGE:   log β_k (k = 1 uses β̃_2), DDPM's CIFAR10 default;
- LEARNED: v·log β_k + (1 − v)·log β̃_k with v = (out + 1)/2 from the network (Improved DDPM).

Network outputs are float32; everything after them runs in the dtype of ``x_t`` (float64 for
likelihoods and coding).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .diffusion import predict_x0
from .schedule import Schedule, ScheduleKind, Spacing, make_schedule, respace, spaced_timesteps
from .unet import UNet, UNetConfig


class VarianceMode(str, enum.Enum):
    SMALL = "small"
    LARGE = "large"
    LEARNED = "learned"


@dataclass(frozen=True)
class PriorConfig:
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(learn_variance=True))
    schedule: ScheduleKind = ScheduleKind.LINEAR
    num_timesteps: int = 1000
    variance: VarianceMode = VarianceMode.LEARNED
    clip_x0: bool = True

    def __post_init__(self):
        object.__setattr__(self, "schedule", ScheduleKind(self.schedule))
        object.__setattr__(self, "variance", VarianceMode(self.variance))
        if self.num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {self.num_timesteps}")
        if (self.variance is VarianceMode.LEARNED) != self.unet.learn_variance:
            raise ValueError("variance 'learned' requires unet.learn_variance = true, and only then")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.unet.image_channels, self.unet.image_size, self.unet.image_size)

    def base_schedule(self) -> Schedule:
        """The full T-step schedule the network was trained with."""
        return make_schedule(self.schedule, self.num_timesteps)

    def to_dict(self) -> dict:
        return {
            "unet": self.unet.to_dict(),
            "schedule": self.schedule.value,
            "num_timesteps": self.num_timesteps,
            "variance": self.variance.value,
            "clip_x0": self.clip_x0,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PriorConfig":
        try:
            return cls(
                unet=UNetConfig(**d["unet"]),
                schedule=d["schedule"],
                num_timesteps=int(d["num_timesteps"]),
                variance=d["variance"],
                clip_x0=bool(d["clip_x0"]),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"invalid prior configuration: {err}") from err

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


@dataclass
class Reverse:
    """p_θ(x_{k−1}|x_k) for a batch: all [N, C, H, W] in the dtype of x_t."""

    mean: torch.Tensor
    log_variance: torch.Tensor
    x0_hat: torch.Tensor


class ScheduleTables:
    """A schedule's per-step constants as float64 tensors on a device, gathered per batch element."""

    def __init__(self, schedule: Schedule, device: torch.device | str = "cpu"):
        c1, c2 = schedule.posterior_mean_coefs
        arrays = {
            "alpha_bar": schedule.alphas_cumprod,
            "c1": c1,
            "c2": c2,
            "log_beta": np.log(schedule.betas),
            "log_small": schedule.posterior_log_variance_clipped,
            "log_large": schedule.large_log_variance,
            "log_posterior_var": np.log(np.maximum(schedule.posterior_variance, 1e-300)),
            "timesteps": schedule.timesteps.astype(np.float64),
        }
        self.schedule = schedule
        self._t = {k: torch.as_tensor(v, dtype=torch.float64, device=device) for k, v in arrays.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._t[name]

    def gather(self, name: str, k: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table ``name`` at indices k ([N] long) shaped [N, 1, 1, 1] in like's dtype."""
        return self._t[name][k].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


class Prior(nn.Module):
    """A DDPM prior. ``net`` maps (x_t float32 [N,C,H,W], t float32 [N] in 1..T) to ε (and v if learned).

    ``config`` is a :class:`PriorConfig` (diffcodec's own priors) or anything with the same reading
    surface: ``image_shape``, ``num_timesteps``, ``variance``, ``clip_x0``, ``base_schedule()``,
    ``to_dict()``/``to_json()`` (``diffusers_prior.DiffusersConfig`` for diffusers checkpoints, which
    pass their own ``net``).
    """

    def __init__(self, config: PriorConfig, net: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.net = net if net is not None else UNet(config.unet)
        self.base_schedule = config.base_schedule()
        self.digest: str | None = None  # set by checkpoint I/O
        self.info: dict = {}  # free-form training record, from the prior file
        self._tables: dict = {}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.config.image_shape

    @property
    def num_dims(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    @property
    def any_size(self) -> bool:
        """True for a fully convolutional network (unet.UNetConfig.fully_convolutional): it codes an image
        of any size whole; :attr:`image_shape` is then only the size it was trained on."""
        unet = getattr(self.config, "unet", None)
        return bool(getattr(unet, "fully_convolutional", False))

    @property
    def input_shape(self) -> tuple[int, int | None, int | None]:
        """(C, H, W) of the images it takes: :attr:`image_shape`, or (C, None, None) for an any-size prior."""
        c, h, w = self.image_shape
        return (c, None, None) if self.any_size else (c, h, w)

    @property
    def stride(self) -> int:
        """Sizes the network takes must be multiples of this (:meth:`network` pads the others)."""
        unet = getattr(self.config, "unet", None)
        return getattr(unet, "stride", 1)

    def schedule(self, steps: int | None = None, spacing: Spacing | str = Spacing.EVEN) -> Schedule:
        """The base schedule, or its respacing to ``steps`` steps."""
        T = self.config.num_timesteps
        if steps is None or steps == T:
            return self.base_schedule
        return respace(self.base_schedule, spaced_timesteps(T, steps, spacing))

    def tables(self, schedule: Schedule, device) -> ScheduleTables:
        key = (id(schedule), str(device))
        hit = self._tables.get(key)
        if hit is None or hit.schedule is not schedule:
            hit = self._tables[key] = ScheduleTables(schedule, device)
        return hit

    def network(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(ε, v) in float32; v is None unless the variance is learned.

        An any-size prior gets x_t padded by edge replication up to multiples of :attr:`stride` (the
        padding is a function of x_t, so p(x_{k−1}|x_k) stays a model of the real pixels alone) and
        its outputs cropped back.
        """
        x = x_t.float()
        h, w = x.shape[-2:]
        s = self.stride
        pad_h, pad_w = -h % s, -w % s
        if self.any_size and (pad_h or pad_w):
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
            return self.split_output(self.net(x, t.float())[..., :h, :w])
        return self.split_output(self.net(x, t.float()))

    def split_output(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A raw network output [N, C or 2C, H, W] → (ε, v or None)."""
        c = self.image_shape[0]
        if self.config.variance is VarianceMode.LEARNED:
            return out[:, :c], out[:, c:]
        return out, None

    def reverse(self, x_t: torch.Tensor, k: torch.Tensor, schedule: Schedule) -> Reverse:
        """p_θ(x_{k−1}|x_k) for x_t [N,C,H,W] at 0-based step indices k [N] of ``schedule``."""
        tab = self.tables(schedule, x_t.device)
        eps, v = self.network(x_t, tab["timesteps"][k])
        return self.reverse_from_output(x_t, k, schedule, eps, v)

    def reverse_from_output(
        self, x_t: torch.Tensor, k: torch.Tensor, schedule: Schedule, eps: torch.Tensor, v: torch.Tensor | None
    ) -> Reverse:
        """:meth:`reverse` given network outputs (the trainer detaches ε here for the hybrid loss)."""
        tab = self.tables(schedule, x_t.device)
        eps = eps.to(x_t.dtype)
        x0_hat = predict_x0(x_t, eps, tab.gather("alpha_bar", k, x_t))
        if self.config.clip_x0:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        mean = tab.gather("c1", k, x_t) * x0_hat + tab.gather("c2", k, x_t) * x_t
        if self.config.variance is VarianceMode.SMALL:
            logvar = tab.gather("log_small", k, x_t).expand_as(x_t)
        elif self.config.variance is VarianceMode.LARGE:
            logvar = tab.gather("log_large", k, x_t).expand_as(x_t)
        else:
            frac = (v.to(x_t.dtype) + 1.0) / 2.0
            logvar = frac * tab.gather("log_beta", k, x_t) + (1.0 - frac) * tab.gather("log_small", k, x_t)
        return Reverse(mean=mean, log_variance=logvar, x0_hat=x0_hat)
