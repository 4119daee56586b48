"""Training DDPM priors: L_simple, L_vlb (importance-sampled t) and hybrid objectives.

- L_simple = E‖ε − ε_θ‖² (mean over dimensions).
- L_vlb: one term L_t per image with t ~ p_t, weighted by 1/(T·p_t) so the loss is an unbiased
  estimate of the bound Σ_t L_t (bits/dim); p_t ∝ √E[L_t²] over the last 10 values of each t,
  uniform until every t has 10, mixed with 0.1% uniform (Improved DDPM, Nichol & Dhariwal 2021).
- hybrid: L_simple + λ·L_vlb with λ = 0.001, t uniform, and the mean inside L_vlb computed from a
  stop-gradient ε so that the L_vlb part trains only the variance output v.

The trainer keeps Adam with linear warm-up, gradient clipping, an EMA of the weights with decay
min(ema, (1 + step)/(10 + step)) (the prior file holds the EMA weights), optional random horizontal flips, periodic atomic checkpoints that
resume exactly (weights, EMA, optimizer, step, importance-sampling history, RNG states), and a
periodic held-out bits/dim figure. Under ``torchrun`` it trains data-parallel: every rank draws the
same global batch (indices, t, noise) from the shared seed and takes its slice, so N processes
follow the single-process run for the same global batch up to float reduction order.
"""

from __future__ import annotations

import enum
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .checkpoint import atomic_write, row_major, safetensors_metadata, save_prior
from .defaults import CODEC_SPACING, CODEC_STEPS, Engine
from .diffusion import pixels_to_model, q_sample
from .engines import with_engine
from .prior import Prior, PriorConfig, VarianceMode
from .terms import compute_terms, step_nats_from_reverse
from .units import nats_to_bpd


class Objective(str, enum.Enum):
    SIMPLE = "simple"
    VLB = "vlb"
    HYBRID = "hybrid"


PRECISIONS = ("float32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    objective: Objective = Objective.HYBRID
    batch_size: int = 64  # global batch, split across ranks
    lr: float = 2e-4
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    flip: bool = False
    seed: int = 0
    hybrid_lambda: float = 0.001
    uniform_mix: float = 0.001  # uniform share of the importance-sampling distribution
    precision: str = "float32"  # "bf16": the network's forward and backward under bf16 autocast (losses in float32)

    def __post_init__(self):
        object.__setattr__(self, "objective", Objective(self.objective))
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.batch_size < 1 or self.lr <= 0 or not 0 <= self.ema_decay < 1 or self.warmup_steps < 0:
            raise ValueError("batch size must be >= 1, lr > 0, 0 <= ema < 1, warm-up >= 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["objective"] = self.objective.value
        return d


class TimestepSampler:
    """Uniform t, or importance sampling by √E[L_t²] over each t's last ``history`` losses."""

    def __init__(self, T: int, loss_aware: bool, uniform_mix: float = 0.001, history: int = 10):
        self.T, self.loss_aware, self.uniform_mix = T, loss_aware, uniform_mix
        self.history = torch.zeros(T, history, dtype=torch.float64)
        self.counts = torch.zeros(T, dtype=torch.int64)

    def probabilities(self) -> torch.Tensor:  # [T]
        uniform = torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        if not self.loss_aware or bool((self.counts < self.history.shape[1]).any()):
            return uniform
        w = torch.sqrt((self.history**2).mean(dim=1))
        w = w / w.sum()
        return w * (1 - self.uniform_mix) + self.uniform_mix * uniform

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(0-based t [n], weight 1/(T·p_t) [n])."""
        p = self.probabilities()
        t = torch.multinomial(p, n, replacement=True, generator=gen)
        return t, 1.0 / (self.T * p[t])

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        for ti, li in zip(t.tolist(), losses.double().tolist()):
            self.history[ti] = torch.roll(self.history[ti], -1)
            self.history[ti, -1] = li
            self.counts[ti] += 1


@dataclass
class Losses:
    loss: torch.Tensor  # [B] the training objective per image
    mse: torch.Tensor  # [B] ‖ε − ε_θ‖² mean over dimensions
    vlb_bpd: torch.Tensor | None  # [B] the sampled term L_t in bits/dim (None for L_simple)


def training_losses(prior: Prior, net, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, weight: torch.Tensor, cfg: TrainConfig) -> Losses:
    """Per-image losses for x0 [B,C,H,W] float in [−1, 1], 0-based t [B], noise like x0.

    ``net`` is the (possibly DDP-wrapped) network of ``prior``.
    """
    schedule = prior.base_schedule
    tab = prior.tables(schedule, x0.device)
    x_t = q_sample(x0, tab.gather("alpha_bar", t, x0), noise)
    with torch.autocast(x_t.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        out = net(x_t, tab["timesteps"][t].float())
    eps, v = prior.split_output(out.float())
    mse = (eps - noise).pow(2).mean(dim=(1, 2, 3))
    if cfg.objective is Objective.SIMPLE:
        return Losses(loss=mse, mse=mse, vlb_bpd=None)
    hybrid = cfg.objective is Objective.HYBRID
    rev = prior.reverse_from_output(x_t, t, schedule, eps.detach() if hybrid else eps, v)
    vlb_bpd = nats_to_bpd(step_nats_from_reverse(x0, x_t, t, rev, tab), prior.num_dims)
    T = schedule.num_steps
    if hybrid:
        return Losses(loss=mse + cfg.hybrid_lambda * T * vlb_bpd, mse=mse, vlb_bpd=vlb_bpd)
    return Losses(loss=T * weight * vlb_bpd, mse=mse, vlb_bpd=vlb_bpd)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr


@dataclass
class EvalPoint:
    step: int
    images_seen: int
    train_seconds: float
    heldout_bpd: float
    heldout_bpd_stderr: float


class CropPool:
    """Training images of different sizes, seen through random ``size``×``size`` crops.

    Every (image, position) is equally likely: an image of H×W is drawn with weight
    (H − size + 1)(W − size + 1), then a position uniformly. Draws use the trainer's generator, so a
    resumed run continues with the crops the uninterrupted one would have drawn.
    """

    def __init__(self, images: list[np.ndarray], size: int):
        fits = [torch.from_numpy(np.ascontiguousarray(im)) for im in images if min(im.shape[1:]) >= size]
        if not fits:
            raise ValueError(f"no training image is {size}x{size} or larger")
        if len({im.shape[0] for im in fits}) != 1:
            raise ValueError("training images differ in channel count")
        self.images, self.size = fits, size
        self.weights = torch.tensor([(im.shape[1] - size + 1) * (im.shape[2] - size + 1) for im in fits], dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.images[0].shape[0], self.size, self.size)

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """[n, C, size, size] uint8 crops."""
        which = torch.multinomial(self.weights, n, replacement=True, generator=gen)
        u = torch.rand(n, 2, generator=gen, dtype=torch.float64)
        s = self.size
        out = torch.empty((n, *self.shape), dtype=torch.uint8)
        for i, k in enumerate(which.tolist()):
            im = self.images[k]
            y = int(u[i, 0] * (im.shape[1] - s + 1))
            x = int(u[i, 1] * (im.shape[2] - s + 1))
            out[i] = im[:, y : y + s, x : x + s]
        return out


class Trainer:
    """Holds the model, EMA, optimizer, sampler and RNG state; :meth:`run` trains to a step count.

    ``images`` is an array [N, C, H, W] of the prior's size, or a :class:`CropPool` of its size.
    """

    def __init__(self, prior_config: PriorConfig, cfg: TrainConfig, images: np.ndarray | CropPool, device: torch.device,
                 heldout: np.ndarray | None = None, eval_engine: Engine | str = Engine.FLOAT32):
        if prior_config.variance is not VarianceMode.LEARNED and cfg.objective is not Objective.SIMPLE:
            raise ValueError(f"objective {cfg.objective.value!r} trains the variance: it needs variance 'learned'")
        self.cfg, self.device = cfg, device
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        if cfg.batch_size % self.world:
            raise ValueError(f"batch size {cfg.batch_size} is not divisible by the {self.world} processes")
        torch.manual_seed(cfg.seed + 1000 * self.rank)  # dropout noise differs per rank
        self.prior = Prior(prior_config).to(device).train()
        shape = images.shape if isinstance(images, CropPool) else tuple(images.shape[1:])
        if tuple(shape) != self.prior.image_shape:
            raise ValueError(f"training images are {list(shape)}, the prior config expects {list(self.prior.image_shape)}")
        self.ema = Prior(prior_config).to(device).eval()
        self.ema.net.load_state_dict(self.prior.net.state_dict())
        self.ema.requires_grad_(False)
        if getattr(prior_config.unet, "norm", "group") == "channel":  # its per-pixel norms are fastest channels-last
            self.prior.net.to(memory_format=torch.channels_last)
            self.ema.net.to(memory_format=torch.channels_last)
        self.net = self.prior.net
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.prior.net)
        self.opt = torch.optim.Adam(self.prior.net.parameters(), lr=cfg.lr)
        self.sampler = TimestepSampler(prior_config.num_timesteps, cfg.objective is Objective.VLB, cfg.uniform_mix)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.images = images if isinstance(images, CropPool) else torch.from_numpy(images)
        self.heldout = heldout
        self.eval_engine = Engine(eval_engine)  # how the held-out evaluation runs the network (engines.with_engine)
        self.step = 0
        self.images_seen = 0
        self.train_seconds = 0.0
        self.curve: list[EvalPoint] = []

    # -- one optimisation step -------------------------------------------------------------------
    def _global_batch(self):
        B = self.cfg.batch_size
        if isinstance(self.images, CropPool):
            x0 = pixels_to_model(self.images.draw(B, self.gen))
        else:
            x0 = pixels_to_model(self.images[torch.randint(0, len(self.images), (B,), generator=self.gen)])
        if self.cfg.flip:
            flip = torch.rand(B, generator=self.gen) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t, weight = self.sampler.sample(B, self.gen)
        noise = torch.randn(x0.shape, generator=self.gen)
        return x0, t, weight.float(), noise

    def train_step(self) -> dict:
        x0, t, weight, noise = self._global_batch()
        b = self.cfg.batch_size // self.world
        sl = slice(self.rank * b, (self.rank + 1) * b)
        dev = self.device
        losses = training_losses(self.prior, self.net, x0[sl].to(dev), t[sl].to(dev), noise[sl].to(dev), weight[sl].to(dev), self.cfg)
        loss = losses.loss.mean()
        for group in self.opt.param_groups:
            group["lr"] = _lr_at(self.step, self.cfg)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.prior.net.parameters(), self.cfg.grad_clip)
        self.opt.step()
        with torch.no_grad():
            ema_p = list(self.ema.net.parameters())
            decay = min(self.cfg.ema_decay, (1.0 + self.step) / (10.0 + self.step))  # warm-up: early EMA is not stuck at init
            torch._foreach_lerp_(ema_p, list(self.prior.net.parameters()), 1.0 - decay)
            for eb, mb in zip(self.ema.net.buffers(), self.prior.net.buffers()):
                eb.copy_(mb)
        if losses.vlb_bpd is not None and self.sampler.loss_aware:
            terms = losses.vlb_bpd.detach().double().cpu()
            if self.world > 1:
                gathered = [torch.empty_like(terms) for _ in range(self.world)]
                dist.all_gather(gathered, terms)
                terms = torch.cat(gathered)
            self.sampler.update(t, terms)
        self.step += 1
        self.images_seen += self.cfg.batch_size
        stats = {"loss": float(loss.detach()), "mse": float(losses.mse.mean().detach()), "grad_norm": float(grad_norm)}
        if losses.vlb_bpd is not None:
            stats["vlb_term_bpd"] = float(losses.vlb_bpd.mean().detach())
        return stats

    # -- held-out bits/dim --------------------------------------------------------------------
    def evaluate(self, steps: int | None = CODEC_STEPS, spacing=CODEC_SPACING, seed: int = 0) -> EvalPoint:
        """VLB of the EMA weights on the held-out images at the codec's default steps (bits/dim), the
        network run through ``eval_engine`` (float32 engines leave the figure unchanged to ~1e-10)."""
        if self.heldout is None:
            raise ValueError("no held-out images to evaluate on")
        schedule = self.ema.schedule(min(steps, self.ema.config.num_timesteps) if steps else None, spacing)
        net = with_engine(self.ema, self.eval_engine, torch.get_num_threads())  # ONNX: the EMA weights of this moment
        terms = compute_terms(net, torch.from_numpy(self.heldout), schedule, torch.Generator().manual_seed(seed))
        bpd = terms.total_bpd()
        point = EvalPoint(self.step, self.images_seen, self.train_seconds, float(bpd.mean()),
                          float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else 0.0)
        self.curve.append(point)
        return point

    # -- checkpoints ---------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        t = {f"model.{k}": row_major(v.detach().cpu()) for k, v in self.prior.net.state_dict().items()}
        t.update({f"ema.{k}": row_major(v.detach().cpu()) for k, v in self.ema.net.state_dict().items()})
        params = list(self.prior.net.parameters())
        for i, p in enumerate(params):
            st = self.opt.state.get(p)
            if st:
                t[f"opt.{i}.exp_avg"] = row_major(st["exp_avg"].cpu())
                t[f"opt.{i}.exp_avg_sq"] = row_major(st["exp_avg_sq"].cpu())
                t[f"opt.{i}.step"] = torch.as_tensor(st["step"]).reshape(1).float().cpu()
        t["sampler.history"] = self.sampler.history.clone()
        t["sampler.counts"] = self.sampler.counts.clone()
        t["rng.gen"] = self.gen.get_state().clone()
        t["rng.torch"] = torch.get_rng_state().clone()
        return t

    def save(self, path: str | Path) -> None:
        """Atomic training checkpoint (safetensors + JSON metadata; no pickle). Rank 0 only."""
        if self.rank != 0:
            return
        meta = {
            "format": "diffcodec-train-state",
            "prior_config": self.prior.config.to_json(),
            "train_config": json.dumps(self.cfg.to_dict()),
            "step": str(self.step),
            "images_seen": str(self.images_seen),
            "train_seconds": repr(self.train_seconds),
            "curve": json.dumps([asdict(p) for p in self.curve]),
        }
        atomic_write(Path(path), st_save(self.state_tensors(), metadata=meta))

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        self.prior.net.load_state_dict(model)
        self.ema.net.load_state_dict(ema)
        for i, p in enumerate(self.prior.net.parameters()):
            if f"opt.{i}.exp_avg" in tensors:
                self.opt.state[p] = {
                    "step": torch.tensor(float(tensors[f"opt.{i}.step"][0])),
                    "exp_avg": torch.empty_like(p).copy_(tensors[f"opt.{i}.exp_avg"]),  # p's device and memory format
                    "exp_avg_sq": torch.empty_like(p).copy_(tensors[f"opt.{i}.exp_avg_sq"]),
                }
        self.sampler.history.copy_(tensors["sampler.history"])
        self.sampler.counts.copy_(tensors["sampler.counts"])
        self.gen.set_state(tensors["rng.gen"])
        if self.world == 1:
            torch.set_rng_state(tensors["rng.torch"])
        self.step = int(meta["step"])
        self.images_seen = int(meta["images_seen"])
        self.train_seconds = float(meta["train_seconds"])
        self.curve = [EvalPoint(**p) for p in json.loads(meta["curve"])]


def read_train_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, PriorConfig, TrainConfig]:
    """A training checkpoint's tensors, metadata and configs; ValueError if unreadable."""
    path = Path(path)
    try:
        data = path.read_bytes()
        meta = safetensors_metadata(data, "diffcodec training checkpoint")
        if meta.get("format") != "diffcodec-train-state":
            raise ValueError
        tensors = st_load(data)
        return tensors, meta, PriorConfig.from_dict(json.loads(meta["prior_config"])), TrainConfig(**json.loads(meta["train_config"]))
    except FileNotFoundError:
        raise ValueError(f"training checkpoint not found: {path}") from None
    except Exception:
        raise ValueError(f"{path}: not a readable diffcodec training checkpoint") from None


def fit(
    trainer: Trainer,
    total_steps: int,
    checkpoint_path: str | Path,
    prior_path: str | Path,
    ckpt_every: int = 500,
    eval_every: int = 0,
    time_limit: float | None = None,
    progress: bool = True,
    info: dict | None = None,
    log_path: str | Path | None = None,
) -> Trainer:
    """Train until ``total_steps`` (or ``time_limit`` seconds), checkpointing and evaluating periodically.

    Every checkpoint also writes the EMA prior to ``prior_path``, so a run killed at any moment leaves
    both a resumable state and a loadable prior. ``log_path`` gets one JSON line per evaluation.
    """
    from tqdm.auto import tqdm

    start = time.monotonic()
    bar = tqdm(total=total_steps, initial=trainer.step, disable=not progress or trainer.rank != 0, unit="step", dynamic_ncols=True)
    stats: dict = {}

    def checkpoint():
        if trainer.rank != 0:
            return
        trainer.save(checkpoint_path)
        record = dict(info or {}, step=trainer.step, images_seen=trainer.images_seen, train_seconds=round(trainer.train_seconds, 1),
                      objective=trainer.cfg.objective.value)
        if trainer.curve:
            record["heldout_bpd"] = round(trainer.curve[-1].heldout_bpd, 4)
        save_prior(trainer.ema, prior_path, info=record)

    def evaluate(stats: dict):
        if trainer.rank != 0 or trainer.heldout is None:
            return
        point = trainer.evaluate()
        bar.write(f"step {point.step}: held-out {point.heldout_bpd:.4f} ± {point.heldout_bpd_stderr:.4f} bits/dim "
                  f"({point.images_seen} images, {point.train_seconds:.0f} s; engine {trainer.eval_engine.value})")
        if log_path:
            with open(log_path, "a") as f:
                f.write(json.dumps(dict(asdict(point), **stats)) + "\n")

    while trainer.step < total_steps:
        if time_limit is not None and time.monotonic() - start > time_limit:
            break
        t0 = time.perf_counter()
        stats = trainer.train_step()
        trainer.train_seconds += time.perf_counter() - t0
        bar.update(1)
        ips = trainer.images_seen / max(trainer.train_seconds, 1e-9)
        bar.set_postfix(loss=f"{stats['loss']:.4f}", img_s=f"{ips:.0f}", refresh=False)
        if not math.isfinite(stats["loss"]):
            raise RuntimeError(f"training diverged at step {trainer.step} (loss {stats['loss']})")
        if eval_every and trainer.step % eval_every == 0:
            evaluate(stats)
        if trainer.step % ckpt_every == 0:
            checkpoint()
    if eval_every and stats and (not trainer.curve or trainer.curve[-1].step != trainer.step):
        evaluate(stats)  # the run's last state always gets a held-out figure
    checkpoint()
    bar.close()
    return trainer
