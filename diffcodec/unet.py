"""The DDPM U-Net (Ho et al. 2020, appendix B): ε_θ(x_t, t), optionally with a variance output v.

The network knows timesteps, not diffusion: it receives the original timestep t (1..T) as a float and
embeds it sinusoidally. Residual blocks carry GroupNorm, SiLU, dropout and the time embedding;
self-attention sits at the resolutions listed in ``attention_resolutions`` and in the middle block.

Fully convolutional variant (``norm="channel"``, ``mid_attention=False``, no attention resolutions):
every normalisation is per pixel over channels (LayerNorm across C, no statistic over the image), so
the network computes the same function on any image size; :meth:`UNetConfig.fully_convolutional`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    image_channels: int = 1
    image_size: int = 28
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (7,)
    dropout: float = 0.1
    learn_variance: bool = False  # output 2C channels: ε and v ∈ [−1, 1] (raw, interpreted by the prior)
    num_heads: int = 1
    norm: str = "group"  # "group": GroupNorm(32) over channels and pixels; "channel": per pixel over channels
    mid_attention: bool = True

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        if self.image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 or 3, got {self.image_channels}")
        levels = len(self.channel_mult) - 1
        if self.image_size % (2**levels) != 0:
            raise ValueError(
                f"image size {self.image_size} is not divisible by 2^{levels} (channel_mult has {levels + 1} levels)"
            )
        if self.base_channels < 1 or self.num_res_blocks < 1:
            raise ValueError("base_channels and num_res_blocks must be positive")
        if self.norm not in ("group", "channel"):
            raise ValueError(f"norm must be 'group' or 'channel', got {self.norm!r}")

    @property
    def fully_convolutional(self) -> bool:
        """True when no layer depends on the image size: the network runs on any H×W divisible by :attr:`stride`."""
        return self.norm == "channel" and not self.mid_attention and not self.attention_resolutions

    @property
    def stride(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        for key in ("norm", "mid_attention"):  # absent at their defaults: older priors keep their digests
            if d[key] == getattr(UNetConfig, key):
                del d[key]
        return d


def _groups(channels: int) -> int:
    return math.gcd(32, channels)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each pixel ([N, C, H, W]), with a per-channel scale and shift."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.shape, self.eps = (channels,), eps  # a constant (ONNX exports it as one)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # fastest on channels-last tensors (UNet.forward makes them)
        return F.layer_norm(x.permute(0, 2, 3, 1), self.shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


def make_norm(kind: str, channels: int) -> nn.Module:
    return ChannelNorm(channels) if kind == "channel" else nn.GroupNorm(_groups(channels), channels)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of timesteps [N] → [N, dim] (Vaswani et al.; DDPM's get_timestep_embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, dropout: float, norm: str = "group"):
        super().__init__()
        self.norm1 = make_norm(norm, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.norm2 = make_norm(norm, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """ε_θ(x_t, t): [N, C, H, W] float, [N] timesteps → [N, C or 2C, H, W]."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.base_channels
        temb = 4 * ch
        self.temb = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(cfg.image_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips, cur, res = [ch], ch, cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                block = nn.ModuleList([ResBlock(cur, ch * mult, temb, cfg.dropout, cfg.norm)])
                cur = ch * mult
                if res in cfg.attention_resolutions:
                    block.append(AttnBlock(cur, cfg.num_heads))
                self.down.append(block)
                skips.append(cur)
            if level != len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(cur, cur, 3, stride=2, padding=1)]))
                skips.append(cur)
                res //= 2

        self.mid = nn.ModuleList(
            [ResBlock(cur, cur, temb, cfg.dropout, cfg.norm)]
            + ([AttnBlock(cur, cfg.num_heads)] if cfg.mid_attention else [])
            + [ResBlock(cur, cur, temb, cfg.dropout, cfg.norm)]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(cur + skips.pop(), ch * mult, temb, cfg.dropout, cfg.norm)])
                cur = ch * mult
                if res in cfg.attention_resolutions:
                    block.append(AttnBlock(cur, cfg.num_heads))
                if level != 0 and i == cfg.num_res_blocks:
                    block.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    block.append(nn.Conv2d(cur, cur, 3, padding=1))
                    res *= 2
                self.up.append(block)

        out_ch = cfg.image_channels * (2 if cfg.learn_variance else 1)
        self.norm_out = make_norm(cfg.norm, cur)
        self.conv_out = nn.Conv2d(cur, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def _run(block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.temb(timestep_embedding(t, self.config.base_channels))
        if self.config.norm == "channel":  # per-pixel norms run on channels-last memory (same values)
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = self._run(block, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for block in self.up:
            h = self._run(block, torch.cat([h, hs.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h))).contiguous()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
