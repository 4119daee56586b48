"""The lossless file format (``diffcodec compress``): a compact little-endian header, then the ANS words.

A 28×28 image costs a few hundred bytes, so the header is kept small: fixed-width fields only where
they must be (magic, version, digest, hashes), every count an unsigned LEB128 varint (one byte below
128, two below 16,384). Layout::

    magic b"DCL" (3) · format version 2 (1) · prior digest, first 8 bytes of its SHA-256 (8)
    varints: steps K, spacing (0 even, 1 front), grid G in eighths, torch threads, largest batch,
             images N, channels C, height H, width W, tile size (the prior's), seed words (incl. seal),
             bootstrap codec of tile 0 (1 WebP lossless as a bare VP8L stream, 2 PNG),
             bootstrap bytes, payload words, names kind (0 template, 1 zlib list, 2 plain list),
             names length L
    names (L) · SHA-256 prefix of the decoded pixels (8) · payload: 4·(payload words), the ANS stack
    bottom first, uint32 · CRC-32 of every byte before it (4)

The CRC covers the whole file, so any truncation or flipped bit is caught before decoding; the pixel
hash catches a decoder that desynchronized (another prior under the same digest prefix, other
float arithmetic). Stack order of the payload: see coding.bitsback (one Bit-Swap chain per batch of
tiles, batches pushed in order and popped in reverse). Round trip (a test executes this)::

    >>> import numpy as np
    >>> h = Header(prior_digest="ab" * 32, steps=10, spacing=1, grid_eighths=24, threads=1,
    ...            max_batch=8, count=2, channels=1, height=8, width=8, tile=8, seed_words=3,
    ...            pixel_hash=b"\\0" * 8, boot_codec=1, boot_bytes=5, names=["a-01.png", "a-02.png"])
    >>> words = np.arange(5, dtype=np.uint32)
    >>> blob = pack(h, words)
    >>> h2, w2 = unpack(blob)
    >>> h2 == h, bool((w2 == words).all()), len(blob) - 4 * len(words)
    (True, True, 51)
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"DCL"
VERSION = 2
DIGEST_BYTES = 8
HASH_BYTES = 8
MAX_PIXELS = 1 << 32  # decoded pixels a file may claim; a forged header must not make us allocate more
NAME_TEMPLATE, NAME_ZLIB, NAME_PLAIN = 0, 1, 2
_NAME_RE = re.compile(r"^(.*?)(\d+)(\D*)$")
_VARINT_FIELDS = ("steps", "spacing", "grid_eighths", "threads", "max_batch", "count", "channels", "height",
                  "width", "tile", "seed_words", "boot_codec", "boot_bytes")


@dataclass(frozen=True)
class Header:
    prior_digest: str  # hex; the first DIGEST_BYTES bytes are stored (unpack returns those)
    steps: int
    spacing: int  # 0 even, 1 front
    grid_eighths: int  # G = grid_eighths / 8
    threads: int
    max_batch: int
    count: int  # images
    channels: int
    height: int
    width: int
    tile: int  # the prior's image size; images are coded as tiles of tile×tile
    seed_words: int  # words under the chains: bootstrap, pseudo-random top-up, seal
    pixel_hash: bytes  # HASH_BYTES bytes
    boot_codec: int  # how tile 0 was coded into the seed
    boot_bytes: int
    names: list[str] = field(default_factory=list)
    payload_words: int = field(default=0, compare=False)  # filled in by unpack

    def __post_init__(self):
        object.__setattr__(self, "prior_digest", self.prior_digest[: 2 * DIGEST_BYTES])

    def matches_prior(self, digest: str) -> bool:
        return bytes.fromhex(digest)[:DIGEST_BYTES] == bytes.fromhex(self.prior_digest)[:DIGEST_BYTES]


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"header field must be >= 0, got {n}")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _Reader:
    def __init__(self, blob: bytes, pos: int):
        self.blob, self.pos = blob, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.blob):
            raise ValueError("compressed file is truncated (incomplete header)")
        self.pos += n
        return self.blob[self.pos - n : self.pos]

    def varint(self) -> int:
        value = 0
        for shift in range(0, 64, 7):
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise ValueError("compressed file is corrupted (overlong header field)")


def _encode_names(names: list[str]) -> tuple[int, bytes]:
    """Consecutively numbered names (x-00000.png, x-00001.png, …) as a template, else the shorter of a
    plain and a zlib-compressed list."""
    m = _NAME_RE.match(names[0]) if names else None
    if m and len(names) > 1:
        prefix, digits, suffix = m.groups()
        start, width = int(digits), len(digits)
        if all(n == f"{prefix}{start + i:0{width}d}{suffix}" for i, n in enumerate(names)):
            return NAME_TEMPLATE, "\0".join([prefix, suffix, str(start), str(width)]).encode()
    plain = "\n".join(names).encode()
    packed = zlib.compress(plain, 9)
    return (NAME_ZLIB, packed) if len(packed) < len(plain) else (NAME_PLAIN, plain)


def _decode_names(kind: int, body: bytes, count: int) -> list[str]:
    try:
        if kind == NAME_TEMPLATE:
            prefix, suffix, start, width = body.decode().split("\0")
            start, width = int(start), int(width)
            return [f"{prefix}{start + i:0{width}d}{suffix}" for i in range(count)]
        if kind in (NAME_ZLIB, NAME_PLAIN):
            names = (zlib.decompress(body) if kind == NAME_ZLIB else body).decode().split("\n")
            if len(names) == count:
                return names
    except (ValueError, zlib.error, UnicodeDecodeError):
        pass
    raise ValueError("compressed file is corrupted (unreadable image names)")


def check_name(name: str) -> str:
    """A plain file name (no directories, no newlines): what we write back into the output folder."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\n\0"):
        raise ValueError(f"unusable image name {name!r} (names must be plain file names)")
    return name


def pack(header: Header, payload: np.ndarray) -> bytes:
    """Header + payload words → file bytes."""
    payload = np.ascontiguousarray(payload, dtype="<u4")
    for n in header.names:
        check_name(n)
    if len(header.names) != header.count:
        raise ValueError("one name per image is required")
    if len(header.pixel_hash) != HASH_BYTES:
        raise ValueError(f"pixel hash must be {HASH_BYTES} bytes")
    kind, body = _encode_names(header.names)
    fields = [getattr(header, f) for f in _VARINT_FIELDS] + [len(payload), kind, len(body)]
    out = MAGIC + bytes([VERSION]) + bytes.fromhex(header.prior_digest)[:DIGEST_BYTES]
    out += b"".join(_varint(v) for v in fields) + body + header.pixel_hash + payload.tobytes()
    return out + struct.pack("<I", zlib.crc32(out))


def unpack(blob: bytes) -> tuple[Header, np.ndarray]:
    """File bytes → (Header, payload uint32 words); ValueError for anything but an intact file."""
    if len(blob) < 4 or blob[:3] != MAGIC:
        raise ValueError("not a diffcodec compressed file (bad magic)")
    if blob[3] != VERSION:
        raise ValueError(f"unsupported diffcodec file version {blob[3]} (this diffcodec reads version {VERSION})")
    r = _Reader(blob, 4)
    digest = r.take(DIGEST_BYTES)
    values = {f: r.varint() for f in _VARINT_FIELDS}
    payload_words, kind, names_len = r.varint(), r.varint(), r.varint()
    n, c, h, w = (values[f] for f in ("count", "channels", "height", "width"))
    if min(n, c, h, w) == 0 or n * c * h * w > MAX_PIXELS:
        raise ValueError(f"compressed file is corrupted (it claims {n} images of {c}x{h}x{w})")
    expected = r.pos + names_len + HASH_BYTES + 4 * payload_words + 4
    if len(blob) != expected:
        what = "truncated" if len(blob) < expected else "followed by extra bytes"
        raise ValueError(f"compressed file is {what} ({len(blob)} bytes, its header says {expected})")
    if struct.unpack_from("<I", blob, len(blob) - 4)[0] != zlib.crc32(blob[:-4]):
        raise ValueError("compressed file is corrupted (checksum mismatch)")
    names = [check_name(x) for x in _decode_names(kind, r.take(names_len), n)]
    pixel_hash = r.take(HASH_BYTES)
    data = r.take(4 * payload_words)
    header = Header(prior_digest=digest.hex(), **values, pixel_hash=pixel_hash, names=names, payload_words=payload_words)
    return header, np.frombuffer(data, dtype="<u4").astype(np.uint32)

