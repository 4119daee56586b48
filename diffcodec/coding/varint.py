"""Unsigned LEB128 varints, the integer fields of diffcodec's file headers (one byte below 128)."""

from __future__ import annotations


def encode_varint(n: int) -> bytes:
    """n ≥ 0 as 7-bit groups, least significant first, the high bit set on every byte but the last."""
    if n < 0:
        raise ValueError(f"header field must be >= 0, got {n}")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
