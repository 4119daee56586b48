"""The first tiles of a lossless file, coded by a classic codec: they are the seed of the ANS stack.

A bits-back chain must pop before it pushes: the first chained tile dips about 6–7 bits/dim into
the stack before its pushes pay it back (coding.lossless.next_batch_size). Whatever the stack holds
at that point is either real data or pseudo-random "initial bits" that the file carries as pure
overhead. So the first B tiles are stored as exact classic files (WebP lossless as a bare VP8L
stream, whose 20-byte RIFF wrapper the decoder rebuilds, or PNG if smaller) and those files *are*
the seed: each costs only its excess over what the chain would have spent on it, and it stands in
for initial bits one for one. Layout of the seed, bottom first: tile 0's file, tile 1's file, …,
tile B−1's file, each padded to whole 32-bit words (coding.container records codec and byte length
of each). Round trip (a test executes this)::

    >>> import numpy as np
    >>> tiles = np.random.default_rng(0).integers(0, 256, (2, 1, 8, 8), dtype=np.uint8)
    >>> boots = [classic_tile(t) for t in tiles]
    >>> words = seed_words(boots)
    >>> back = unseed(words, [(codec, len(data)) for codec, data in boots], (1, 8, 8))
    >>> bool((back == tiles).all())
    True
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

BOOT_WEBP, BOOT_PNG = 1, 2  # classic codecs: WebP lossless (a bare VP8L stream), PNG
BOOT_NAMES = {BOOT_WEBP: "WebP lossless", BOOT_PNG: "PNG"}
MAX_BOOT_TILES = 16  # classic tiles a file may start with (the encoder stops long before: 1–3 measured)


def _classic(tile: np.ndarray, codec: int) -> bytes:
    """Tile [C, t, t] → bytes of ``codec``; for WebP only the VP8L stream, without the 20-byte RIFF wrapper."""
    arr = tile[0] if tile.shape[0] == 1 else tile.transpose(1, 2, 0)
    buf = io.BytesIO()
    if codec == BOOT_WEBP:
        Image.fromarray(arr).save(buf, format="WEBP", lossless=True, quality=100, method=6)
        data = buf.getvalue()
        if data[:4] != b"RIFF" or data[8:16] != b"WEBPVP8L":  # an extended file (VP8X): not expected here
            raise KeyError("WebP encoder wrote an extended file")
        return data[20 : 20 + int.from_bytes(data[16:20], "little")]
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def webp_file(vp8l: bytes) -> bytes:
    """The simple-format WebP file around a VP8L stream (RIFF chunks are padded to even sizes)."""
    chunk = b"VP8L" + len(vp8l).to_bytes(4, "little") + vp8l + b"\0" * (len(vp8l) % 2)
    return b"RIFF" + (4 + len(chunk)).to_bytes(4, "little") + b"WEBP" + chunk


def unclassic(data: bytes, codec: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Decode a classic tile; ValueError on anything but a [C, t, t] uint8 image."""
    try:
        with Image.open(io.BytesIO(webp_file(data) if codec == BOOT_WEBP else data)) as im:
            arr = np.asarray(im.convert("L" if shape[0] == 1 else "RGB"), dtype=np.uint8)
    except (OSError, ValueError):
        raise ValueError("decoding desynchronized (a bootstrap tile is unreadable); no images written") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if arr.shape != shape:
        raise ValueError("decoding desynchronized (a bootstrap tile has the wrong shape); no images written")
    return arr


def classic_tile(tile: np.ndarray) -> tuple[int, bytes]:
    """A tile as the smallest exact classic file: (codec id, bytes)."""
    best = None
    for codec in (BOOT_WEBP, BOOT_PNG):
        try:
            data = _classic(tile, codec)
        except (OSError, KeyError):  # a Pillow build without WebP
            continue
        if np.array_equal(unclassic(data, codec, tile.shape), tile) and (best is None or len(data) < len(best[1])):
            best = (codec, data)
    if best is None:
        raise ValueError("no exact classic codec available for the bootstrap tile")
    return best


def as_words(data: bytes) -> np.ndarray:
    """Bytes → little-endian uint32 words, zero-padded."""
    return np.frombuffer(data + b"\0" * (-len(data) % 4), dtype="<u4").astype(np.uint32)


def seed_words(boots: list[tuple[int, bytes]]) -> np.ndarray:
    """The seed of the stack, bottom first: every classic file padded to words, in tile order."""
    return np.concatenate([as_words(data) for _, data in boots])


def unseed(words: np.ndarray, boots: list[tuple[int, int]], shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`seed_words` given (codec, byte length) per tile → tiles [B, C, t, t] uint8."""
    out, at = [], 0
    for codec, nbytes in boots:
        n = -(-nbytes // 4)
        out.append(unclassic(words[at : at + n].astype("<u4").tobytes()[:nbytes], codec, shape))
        at += n
    return np.stack(out)
