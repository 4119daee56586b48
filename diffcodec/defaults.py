"""Defaults shared by the commands, in one place."""

from __future__ import annotations

from .schedule import Spacing

# Steps and spacing the codecs (compress/encode) use unless told otherwise. The embedded prior's
# test-set bits/dim is reported at exactly these (README).
CODEC_STEPS = 100
CODEC_SPACING = Spacing.FRONT
