"""The one place where nats become bits per dimension."""

from __future__ import annotations

import math


def nats_to_bpd(nats, num_dims: int):
    """bits/dim = nats / (D · ln 2) for nats summed over D = C·H·W dimensions (float, array or tensor)."""
    return nats / (num_dims * math.log(2.0))


def bpd_to_nats(bpd, num_dims: int):
    """Inverse of :func:`nats_to_bpd`."""
    return bpd * (num_dims * math.log(2.0))
