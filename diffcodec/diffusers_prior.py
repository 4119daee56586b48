"""Hugging Face diffusers DDPM checkpoints as diffcodec priors, from disk only.

Optional: needs ``pip install 'diffcodec[diffusers]'``. ``checkpoint.load_prior`` sends folders here.

Layouts: a pipeline folder (``unet/`` and ``scheduler/``, usually with ``model_index.json``) or a
model folder holding ``config.json``, the weights and ``scheduler_config.json`` (or ``scheduler/``)
side by side, as the google/ddpm-* repositories do. Supported: ``UNet2DModel`` with
``DDPMScheduler``. Weights load from safetensors only (no pickle, so no code from the folder runs),
with ``local_files_only`` (no network).

How the checkpoint's conventions map onto diffcodec's (tests/test_diffusers.py checks each against
diffusers' own ``DDPMScheduler`` and ``UNet2DModel`` on the same inputs):

- timesteps: diffusers' index t' = 0..T−1 is the paper's step t = t' + 1 (``alphas_cumprod[t']`` is
  ᾱ_t). diffcodec hands networks t in 1..T; :class:`DiffusersNet` feeds the UNet t − 1.
- schedule: DDPMScheduler's formulas (``linear``: β linear from beta_start to beta_end;
  ``scaled_linear``: √β linear; ``squaredcos_cap_v2``: the Improved-DDPM cosine, β ≤ 0.999), kept in
  float64 (diffusers keeps float32 tables; they agree to float32 round-off).
- variance: ``fixed_small`` → small (β̃_t), ``fixed_large`` → large (β_t), ``learned_range`` → learned
  (log σ² = frac·log β_t + (1 − frac)·log β̃_t, frac = (v + 1)/2, v the UNet's second C channels).
  At the first step diffusers adds no noise, and its table holds max(β̃_1, 1e-20) = 1e-20 (β_1 for
  fixed_large; log 1e-20 as the lower end of learned_range); the likelihood needs a real decoder
  variance there, so diffcodec puts log β̃_2 in place of log β̃_1, as the DDPM and Improved-DDPM
  likelihood code (``calc_bpd_loop``) does.
- prediction: ``epsilon`` as is; ``v_prediction`` → ε = √ᾱ v + √(1 − ᾱ) x_t; ``sample`` →
  ε = (x_t − √ᾱ x̂_0)/√(1 − ᾱ), both in float64, so x̂_0 and the mean are diffusers'.
- clipping: ``clip_sample`` clips x̂_0 to [−1, 1] (other ``clip_sample_range`` values and
  ``thresholding`` are refused).
- data: pixels k → k/127.5 − 1, the [−1, 1] range DDPMPipeline maps back with x/2 + 0.5.

Refused with a one-line ValueError: other model or scheduler classes, class-conditional UNets, the
``fourier`` time embedding (score-SDE models), the other variance types (``learned`` is unbounded;
the ``_log`` variants are sampler variations), other schedules, ``trained_betas``,
``rescale_betas_zero_snr``, non-square images, channel counts other than 1 or 3.

The digest is ``checkpoint.prior_digest`` over :meth:`DiffusersConfig.to_json` (what was understood
plus the UNet's config.json) and the UNet's weights: moving the folder keeps it; changing a weight,
the scheduler or the network configuration changes it.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .diffusion import eps_from_v, eps_from_x0
from .prior import Prior, VarianceMode
from .schedule import Schedule, cosine_betas, range_betas, schedule_from_betas

INSTALL_HINT = "pip install 'diffcodec[diffusers]'"
MODEL_CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

VARIANCES = {
    "fixed_small": VarianceMode.SMALL,
    "fixed_large": VarianceMode.LARGE,
    "learned_range": VarianceMode.LEARNED,
}
SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTIONS = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class DiffusersConfig:
    """What diffcodec understood from a diffusers folder; the reading surface of ``PriorConfig``."""

    unet: dict  # the UNet's config.json without its "_" keys (what the network was built from)
    beta_schedule: str  # linear | scaled_linear | squaredcos_cap_v2
    beta_start: float
    beta_end: float
    num_timesteps: int
    variance_type: str  # diffusers' name, mapped onto ``variance``
    prediction_type: str  # epsilon | v_prediction | sample
    clip_x0: bool
    image_channels: int
    image_size: int
    folder: str = field(default="", compare=False)  # where it was loaded from; not part of the digest

    @property
    def variance(self) -> VarianceMode:
        return VARIANCES[self.variance_type]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_channels, self.image_size, self.image_size)

    def base_schedule(self) -> Schedule:
        """The T-step schedule of DDPMScheduler's configuration, in float64 (see the module docstring)."""
        if self.beta_schedule == "squaredcos_cap_v2":
            betas = cosine_betas(self.num_timesteps)
        else:
            betas = range_betas(self.beta_start, self.beta_end, self.num_timesteps, sqrt=self.beta_schedule == "scaled_linear")
        return schedule_from_betas(betas)

    def to_dict(self) -> dict:
        return {
            "source": "diffusers",
            "schedule": self.beta_schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "num_timesteps": self.num_timesteps,
            "variance": self.variance.value,
            "variance_type": self.variance_type,
            "prediction_type": self.prediction_type,
            "clip_x0": self.clip_x0,
            "image_shape": list(self.image_shape),
            "unet": self.unet,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


class DiffusersNet(nn.Module):
    """diffcodec's network contract over a ``UNet2DModel``.

    (x_t float32 [N, C, H, W], t float [N] in 1..T) → float32 [N, C or 2C, H, W]: ε, then the raw
    variance channels if any. The UNet gets diffusers' 0-based timestep t − 1; v- and x_0-predictions
    become ε in float64 with ᾱ_t of the base schedule (ᾱ is a table lookup, not diffusion logic).
    """

    def __init__(self, unet: nn.Module, prediction_type: str, alphas_cumprod: np.ndarray):
        super().__init__()
        self.unet = unet
        self.prediction_type = prediction_type
        self.register_buffer("alpha_bar", torch.as_tensor(alphas_cumprod, dtype=torch.float64), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        index = t.round().long() - 1  # diffusers' timestep t' = t − 1
        out = self.unet(x, index, return_dict=False)[0]
        if self.prediction_type == "epsilon":
            return out
        c = x.shape[1]
        pred, rest = out[:, :c].double(), out[:, c:]
        abar = self.alpha_bar[index].view(-1, 1, 1, 1)
        convert = eps_from_v if self.prediction_type == "v_prediction" else eps_from_x0
        return torch.cat([convert(x.double(), pred, abar).float(), rest], dim=1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())


@dataclass(frozen=True)
class Layout:
    model_dir: Path  # config.json and the weights
    scheduler_config: Path


def is_diffusers_folder(folder: Path) -> bool:
    return (folder / "model_index.json").is_file() or (folder / "unet").is_dir() or (folder / MODEL_CONFIG).is_file()


def find_layout(folder: Path) -> Layout:
    """Where the UNet and the scheduler configuration sit in ``folder``; ValueError if it is no diffusers folder."""
    if (folder / "unet").is_dir():
        model_dir = folder / "unet"
    elif (folder / MODEL_CONFIG).is_file():
        model_dir = folder
    else:
        raise ValueError(f"{folder} is a folder but not a diffusers checkpoint (expected unet/ and scheduler/, "
                         f"or {MODEL_CONFIG} beside {SCHEDULER_CONFIG})")
    for candidate in (folder / "scheduler" / SCHEDULER_CONFIG, folder / SCHEDULER_CONFIG):
        if candidate.is_file():
            return Layout(model_dir, candidate)
    raise ValueError(f"{folder}: no scheduler configuration (scheduler/{SCHEDULER_CONFIG} or {SCHEDULER_CONFIG}); "
                     f"diffcodec needs the DDPMScheduler the UNet was trained with")


def check_weights(model_dir: Path) -> None:
    """ValueError unless ``model_dir`` holds safetensors weights (pickled ones are never loaded)."""
    names = sorted(p.name for p in model_dir.iterdir() if p.is_file())
    if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
        return
    pickled = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickled:
        raise ValueError(f"{model_dir} holds only pickled weights ({pickled[0]}); diffcodec loads safetensors only, "
                         f"because unpickling runs code from the file: convert it once where you trust it "
                         f"(UNet2DModel.from_pretrained(DIR).save_pretrained(DIR) writes a .safetensors file)")
    raise ValueError(f"{model_dir}: no weights (expected diffusion_pytorch_model.safetensors)")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _import_diffusers():
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError:
        raise ValueError(f"this prior is a diffusers folder; loading it needs diffusers: {INSTALL_HINT}") from None
    return UNet2DModel, DDPMScheduler


@contextlib.contextmanager
def _quiet_diffusers():
    """diffusers' warnings (unused config keys, accelerate) are not for diffcodec's users; errors still raise."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _with_defaults(cls, raw: dict) -> dict:
    """A config.json as ``cls`` reads it: its __init__ defaults, overridden by the file's entries."""
    params = inspect.signature(cls.__init__).parameters.items()
    return {**{name: p.default for name, p in params if p.default is not inspect.Parameter.empty}, **raw}


def understand_scheduler(cfg: dict, where: Path) -> dict:
    """The DDPMScheduler configuration (defaults filled in by diffusers) checked against what diffcodec supports."""
    def refuse(what: str) -> ValueError:
        return ValueError(f"{where}: {what}")

    if cfg.get("rescale_betas_zero_snr"):
        raise refuse("rescale_betas_zero_snr is not supported (zero terminal SNR leaves no prior term)")
    if cfg.get("trained_betas") is not None:
        raise refuse("trained_betas are not supported (use linear, scaled_linear or squaredcos_cap_v2)")
    if cfg["beta_schedule"] not in SCHEDULES:
        raise refuse(f"beta_schedule {cfg['beta_schedule']!r} is not supported (expected {', '.join(SCHEDULES)})")
    if cfg["variance_type"] not in VARIANCES:
        raise refuse(f"variance_type {cfg['variance_type']!r} is not supported (expected {', '.join(VARIANCES)})")
    if cfg["prediction_type"] not in PREDICTIONS:
        raise refuse(f"prediction_type {cfg['prediction_type']!r} is not supported (expected {', '.join(PREDICTIONS)})")
    if cfg.get("thresholding"):
        raise refuse("thresholding (dynamic x0 thresholding) is not supported; diffcodec clips x0 to [-1, 1] or not at all")
    if cfg["clip_sample"] and float(cfg.get("clip_sample_range", 1.0)) != 1.0:
        raise refuse(f"clip_sample_range {cfg['clip_sample_range']} is not supported (data lie in [-1, 1]; expected 1.0)")
    T = int(cfg["num_train_timesteps"])
    if T < 2:
        raise refuse(f"num_train_timesteps must be >= 2, got {T}")
    if cfg["beta_schedule"] != "squaredcos_cap_v2" and not 0 < cfg["beta_start"] <= cfg["beta_end"] <= 1:
        raise refuse(f"beta_start {cfg['beta_start']} and beta_end {cfg['beta_end']} must satisfy 0 < start <= end <= 1")
    return cfg


def understand(raw_unet: dict, unet_cfg: dict, sched_cfg: dict, layout: Layout, folder: Path) -> DiffusersConfig:
    """A :class:`DiffusersConfig` from the UNet's config.json as written (``raw_unet``) and with
    diffusers' defaults filled in (``unet_cfg``), and the scheduler's configuration (defaults filled).

    Only the file as written enters the digest, so a newer diffusers with new defaults keeps it.
    """
    where = layout.model_dir / MODEL_CONFIG
    channels, out_channels = unet_cfg.get("in_channels"), unet_cfg.get("out_channels")
    if channels not in (1, 3):
        raise ValueError(f"{where}: in_channels {channels} is not supported (diffcodec codes 1- or 3-channel images)")
    variance = VARIANCES[sched_cfg["variance_type"]]
    expected = 2 * channels if variance is VarianceMode.LEARNED else channels
    if out_channels != expected:
        raise ValueError(f"{where}: out_channels {out_channels} does not fit variance_type "
                         f"{sched_cfg['variance_type']!r} with in_channels {channels} (expected {expected})")
    if unet_cfg.get("num_class_embeds") is not None or unet_cfg.get("class_embed_type") is not None:
        raise ValueError(f"{where}: class-conditional UNets are not supported (diffcodec's priors are unconditional)")
    if unet_cfg.get("time_embedding_type", "positional") == "fourier":
        raise ValueError(f"{where}: time_embedding_type 'fourier' is for score-SDE models, not DDPM timesteps")
    size = unet_cfg.get("sample_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"{where}: sample_size {size!r} is not supported (expected one square image size)")
    return DiffusersConfig(
        unet={k: v for k, v in sorted(raw_unet.items()) if not k.startswith("_")},
        beta_schedule=sched_cfg["beta_schedule"],
        beta_start=float(sched_cfg["beta_start"]),
        beta_end=float(sched_cfg["beta_end"]),
        num_timesteps=int(sched_cfg["num_train_timesteps"]),
        variance_type=sched_cfg["variance_type"],
        prediction_type=sched_cfg["prediction_type"],
        clip_x0=bool(sched_cfg["clip_sample"]),
        image_channels=channels,
        image_size=size,
        folder=str(folder),
    )


def load_diffusers_prior(folder: str | os.PathLike, device: str | torch.device = "cpu") -> Prior:
    """A diffusers DDPM folder as a :class:`Prior` (eval mode, digest set); ValueError in one line otherwise."""
    from .checkpoint import prior_digest  # checkpoint imports this module lazily; no import cycle at load

    folder = Path(folder)
    layout = find_layout(folder)
    check_weights(layout.model_dir)
    raw_unet, raw_sched = read_json(layout.model_dir / MODEL_CONFIG), read_json(layout.scheduler_config)
    for cfg, path, expected in ((raw_unet, layout.model_dir / MODEL_CONFIG, "UNet2DModel"),
                                (raw_sched, layout.scheduler_config, "DDPMScheduler")):
        if cfg.get("_class_name", expected) != expected:
            raise ValueError(f"{path}: {cfg['_class_name']} is not supported (diffcodec reads {expected})")
    UNet2DModel, DDPMScheduler = _import_diffusers()
    sched_cfg = understand_scheduler(_with_defaults(DDPMScheduler, raw_sched), layout.scheduler_config)
    config = understand(raw_unet, _with_defaults(UNet2DModel, raw_unet), sched_cfg, layout, folder)
    with _quiet_diffusers():
        try:
            unet = UNet2DModel.from_pretrained(layout.model_dir, local_files_only=True, use_safetensors=True,
                                               low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{layout.model_dir}: the UNet does not load ({first})") from None
    unet = unet.float().eval()
    net = DiffusersNet(unet, config.prediction_type, config.base_schedule().alphas_cumprod)
    prior = Prior(config, net)
    prior.digest = prior_digest(config, unet.state_dict())
    prior.info = {"folder": str(folder), "checkpoint diffusers version": raw_unet.get("_diffusers_version", "?")}
    return prior.to(device).eval()
