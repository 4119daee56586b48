"""diffcodec: compression and likelihood evaluation with DDPM diffusion priors."""

from .checkpoint import load_prior, save_prior
from .prior import Prior, PriorConfig, VarianceMode
from .schedule import Schedule, ScheduleKind, Spacing, make_schedule, respace, spaced_timesteps
from .terms import Terms, compute_terms
from .unet import UNet, UNetConfig
from .units import nats_to_bpd

__version__ = "0.1.0"
