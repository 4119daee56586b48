"""The progressive file format (``diffcodec encode``): a small header, a bit stream, a CRC.

A 28×28 file is a few hundred bytes, so every count is an unsigned LEB128 varint. Layout::

    magic b"DP" (2) · format version 5 (1; version 4 files are read too) · prior digest, first 2 bytes of its SHA-256 (2)
    varint flags: bit 0 = the default coder parameters (below), bit 1 = three channels (else one),
             bits 2-6 = finish (0: a lossy file; else how x_0 follows the last step, coding.progressive_finish),
             bit 7 = the network ran on CUDA (decodable only there; else CPU),
             bits 8-9 = the network's engine, an index into defaults.CODING_ENGINES (0 float32 torch,
             1 ONNX Runtime, 2 mixed)
    varints, only when bit 0 is clear: steps K, spacing (0 even, 1 front), chunk size κ and merge
             size in quarter bits, torch threads, tiles per network call
    varints: height H, width W, stop (reverse steps sent in the file, < K), total file bytes
    CRC-16 (CCITT) of the header bytes before it (2)

(The tile size is the prior's, fixed by the digest.) A 28×28 file with default parameters spends
17 bytes on header and checksums.
    body: the step stream and, when finish > 0, x_0's range-coded words (coding.progressive)
    CRC-32 of every byte before it followed by the decoded pixels [C, H, W] uint8 (4)

The total length in the header tells a truncated file (shorter: decode its complete steps, say it is
partial) from a corrupted one (the right length but a CRC mismatch: an error); the header CRC keeps
a cut file from being decoded under a damaged header; the final CRC covers the pixels the file
decodes to, so a decoder that desynchronizes fails loudly instead of showing a wrong image.
Round trip (a test executes this)::

    >>> import numpy as np
    >>> h = Header(prior_digest="ab" * 32, steps=100, spacing=1, chunk_quarters=40, merge_quarters=64, threads=1,
    ...            max_batch=64, channels=1, height=28, width=28, stop=99, total_bytes=0, finish=1)
    >>> pixels = np.zeros((1, 28, 28), np.uint8)
    >>> blob = pack(h, b"body", pixels)
    >>> h2, body, complete = unpack(blob)
    >>> (h2.steps, h2.stop, body, complete, verify(blob, pixels), len(blob))
    (100, 99, b'body', True, True, 20)
    >>> unpack(blob[:-4])[1:]                      # a cut file: the body so far, not complete
    (b'body', False)
"""

from __future__ import annotations

import binascii
import dataclasses
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from ..defaults import CODING_ENGINES
from .progressive_finish import CLASSES, DECODER, MAX_CODE
from .varint import encode_varint

MAGIC = b"DP"
# 5: the residual finish (code 19), tiles turned before the exact end; 4: counter-based candidate codes
# (coding.candidates); 3 seeded torch generators per block; 2 drew float32 normals
VERSION = 5
MAX_FINISH = {4: CLASSES, VERSION: MAX_CODE}  # the versions this diffcodec reads and the finish codes each may hold
DIGEST_BYTES = 2  # another prior passes with odds 2^-16; a complete file is still caught by the pixel CRC
MAX_DIMS = 1 << 26  # pixels × channels a file may claim (the decoder holds float64 latents of this size)
MAX_STEPS = 100_000
_PARAMS = ("steps", "spacing", "chunk_quarters", "merge_quarters", "threads", "max_batch")
DEFAULT_PARAMS = (100, 1, 40, 64, 1, 64)  # what flag bit 0 stands for
_SHAPE = ("height", "width", "stop", "total_bytes")


@dataclass(frozen=True)
class Header:
    prior_digest: str  # hex; the first DIGEST_BYTES bytes are stored
    steps: int
    spacing: int
    chunk_quarters: int
    merge_quarters: int
    threads: int
    max_batch: int
    channels: int
    height: int
    width: int
    stop: int
    total_bytes: int
    cuda: bool = False  # candidates and network on a CUDA device (their numbers differ from the CPU's)
    finish: int = 0  # how x_0 follows step ``stop`` (coding.progressive_finish); 0: a lossy file
    engine: int = 0  # the network's engine: an index into defaults.CODING_ENGINES
    version: int = VERSION  # the format the file was written in (MAX_FINISH: the ones this diffcodec reads)

    def __post_init__(self):
        object.__setattr__(self, "prior_digest", self.prior_digest[: 2 * DIGEST_BYTES])

    def matches_prior(self, digest: str) -> bool:
        return digest[: 2 * DIGEST_BYTES] == self.prior_digest


def replace(header: Header, **changes) -> Header:
    return dataclasses.replace(header, **changes)


def _header_bytes(h: Header) -> bytes:
    params = tuple(getattr(h, f) for f in _PARAMS)
    flags = (params == DEFAULT_PARAMS) | (2 if h.channels == 3 else 0) | (h.finish << 2) | (128 if h.cuda else 0) | (h.engine << 8)
    out = MAGIC + bytes([h.version]) + bytes.fromhex(h.prior_digest)[:DIGEST_BYTES] + encode_varint(flags)
    if not flags & 1:
        out += b"".join(encode_varint(v) for v in params)
    out += b"".join(encode_varint(getattr(h, f)) for f in _SHAPE)
    return out + struct.pack("<H", binascii.crc_hqx(out, 0xFFFF))


def _sized(header: Header, body_len: int) -> bytes:
    """Header bytes with total_bytes set to the length of the whole file (a fixed point: the varint's size counts)."""
    total = 0
    for _ in range(4):
        hb = _header_bytes(replace(header, total_bytes=total))
        if len(hb) + body_len + 4 == total:
            return hb
        total = len(hb) + body_len + 4
    return _header_bytes(replace(header, total_bytes=total))


def file_bytes(header: Header, stream_bits: int) -> int:
    """Size of a file with this header whose body is ``stream_bits`` bits (padded to bytes)."""
    body = -(-stream_bits // 8)
    return len(_sized(header, body)) + body + 4


def _pixel_bytes(pixels: np.ndarray) -> bytes:
    return str(list(pixels.shape)).encode() + np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()


def pack(header: Header, body: bytes, pixels: np.ndarray) -> bytes:
    """Header + body + CRC-32 over both and over the pixels the file decodes to."""
    out = _sized(header, len(body)) + body
    return out + struct.pack("<I", zlib.crc32(_pixel_bytes(pixels), zlib.crc32(out)))


def verify(blob: bytes, pixels: np.ndarray) -> bool:
    """Whether a complete file's CRC matches its bytes and the pixels decoded from it."""
    return struct.unpack_from("<I", blob, len(blob) - 4)[0] == zlib.crc32(_pixel_bytes(pixels), zlib.crc32(blob[:-4]))


def unpack(blob: bytes) -> tuple[Header, bytes, bool]:
    """File bytes (or a prefix) → (Header, body so far, complete). ValueError for anything else."""
    if blob[:3] == b"DCL":
        raise ValueError("this is a lossless file from `diffcodec compress`; decode it with `diffcodec decompress`")
    m = len(MAGIC)
    if len(blob) <= m or blob[:m] != MAGIC:
        raise ValueError("not a diffcodec progressive file (bad magic)" if len(blob) >= m or not MAGIC.startswith(blob)
                         else "progressive file is truncated inside its header")
    if blob[m] not in MAX_FINISH:
        raise ValueError(f"unsupported progressive file version {blob[m]} (this diffcodec reads versions "
                         f"{', '.join(map(str, MAX_FINISH))})")
    pos, values = m + 1 + DIGEST_BYTES, {}
    try:
        flags, pos = _readencode_varint(blob, pos)
        if flags & 1:
            values.update(zip(_PARAMS, DEFAULT_PARAMS))
        for f in ([] if flags & 1 else list(_PARAMS)) + list(_SHAPE):
            values[f], pos = _readencode_varint(blob, pos)
        values["channels"] = 3 if flags & 2 else 1
        values["finish"] = (flags >> 2) & 31
        values["cuda"] = bool(flags & 128)
        values["engine"] = flags >> 8
        (crc,) = struct.unpack_from("<H", blob, pos)
    except (IndexError, struct.error):
        raise ValueError(f"progressive file is truncated inside its header ({len(blob)} bytes)") from None
    if crc != binascii.crc_hqx(blob[:pos], 0xFFFF):
        raise ValueError("progressive file is corrupted (header checksum mismatch)")
    if flags >> 10:
        raise ValueError("progressive file is corrupted (unknown header flags)")
    header = Header(prior_digest=blob[m + 1 : m + 1 + DIGEST_BYTES].hex(), version=blob[m], **values)
    _check_fields(header)
    start = pos + 2
    if header.total_bytes < start + 4:
        raise ValueError("progressive file is corrupted (impossible length in its header)")
    if len(blob) > header.total_bytes:
        raise ValueError(f"progressive file is followed by extra bytes ({len(blob)} bytes, its header says {header.total_bytes})")
    if len(blob) == header.total_bytes:
        return header, blob[start:-4], True
    return header, blob[start:], False


def _readencode_varint(blob: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 63, 7):
        byte = blob[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise ValueError("progressive file is corrupted (overlong header field)")


def _check_fields(h: Header) -> None:
    checks = [
        (2 <= h.steps <= MAX_STEPS, "steps"),
        (h.spacing in (0, 1), "spacing"),
        (4 <= h.chunk_quarters <= 96, "chunk size"),
        (h.merge_quarters <= 1024, "merge size"),
        (1 <= h.threads <= 255, "threads"),
        (1 <= h.max_batch <= 65535, "batch size"),
        (h.channels in (1, 3), "channels"),
        (1 <= h.height < 65536 and 1 <= h.width < 65536, "image size"),
        (h.stop < h.steps, "stop step"),
        (h.finish <= MAX_FINISH[h.version] and (h.finish != DECODER or h.stop == h.steps - 1), "finish"),
        (h.engine < len(CODING_ENGINES), "engine"),
        (h.channels * h.height * h.width <= MAX_DIMS, "image size"),
    ]
    for ok, what in checks:
        if not ok:
            raise ValueError(f"progressive file is corrupted (impossible {what} in its header)")


def check_work(header: Header, num_tiles: int) -> None:
    """Refuse headers whose implied work (tiles × steps) is absurd before allocating anything."""
    if num_tiles * header.steps > 1 << 28 or header.channels * header.height * header.width > 1 << 26:
        raise ValueError(f"progressive file claims {num_tiles} tiles × {header.steps} steps of a "
                         f"{header.channels}x{header.height}x{header.width} image; refusing")
