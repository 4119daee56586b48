"""diffcodec: compression and likelihood evaluation with DDPM diffusion priors.

The names below are imported on first use (PEP 562), so that ``import diffcodec.schedule`` or the
command line's ``--help`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_prior": "checkpoint", "save_prior": "checkpoint",
    "Prior": "prior", "PriorConfig": "prior", "VarianceMode": "prior",
    "Schedule": "schedule", "ScheduleKind": "schedule", "Spacing": "schedule", "make_schedule": "schedule",
    "respace": "schedule", "spaced_timesteps": "schedule",
    "Terms": "terms", "compute_terms": "terms",
    "UNet": "unet", "UNetConfig": "unet",
    "nats_to_bpd": "units",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'diffcodec' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
