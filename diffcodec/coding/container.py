"""The lossless file format (``diffcodec compress``): a small little-endian header, then the ANS words.

Layout (all integers little-endian)::

    offset  size  field
    0       3     magic b"DCL"
    3       1     format version (1)
    4       16    prior digest (first 16 bytes of the SHA-256 recorded in the prior file)
    20      2     steps K                      22  1  spacing (0 even, 1 front)
    23      1     grid G in eighths            24  1  torch threads used for the network
    25      2     largest batch of tiles       27  4  number of images N
    31      1     channels C                   32  2  height H     34  2  width W
    36      2     tile size (the prior's)      38  4  seed words kept (initial bits / 32, incl. seal)
    42      4     CRC-32 of the kept seed      46  8  SHA-256 prefix of the decoded pixels
    54      1     bootstrap codec of tile 0 (0 none, 1 WebP lossless, 2 PNG)
    55      4     bootstrap bytes (its length; its words sit at the top of the seed)
    59      4     payload words                63  4  CRC-32 of the payload bytes
    67      1     names kind (0 template, 1 zlib list)   68  4  names length L
    72      L     names
    72+L    4     CRC-32 of all header bytes before it
    76+L    4·W   payload: the ANS stack bottom first, uint32 words

Stack order of the payload: see coding.bitsback (one Bit-Swap chain per batch of tiles, batches pushed
in order and popped in reverse). Round trip (a test executes this)::

    >>> import numpy as np
    >>> h = Header(prior_digest="ab" * 16, steps=10, spacing=1, grid_eighths=24, threads=1,
    ...            max_batch=8, count=2, channels=1, height=8, width=8, tile=8, seed_words=3,
    ...            seed_crc=0, pixel_hash=b"\\0" * 8, names=["a-01.png", "a-02.png"])
    >>> words = np.arange(5, dtype=np.uint32)
    >>> h2, w2 = unpack(pack(h, words))
    >>> h2 == h, bool((w2 == words).all())
    (True, True)
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"DCL"
VERSION = 1
_FIXED = struct.Struct("<3sB16sHBBBHIBHHHII8sBIIIBI")  # fields up to and including the names length
_CRC = struct.Struct("<I")
NAME_TEMPLATE, NAME_LIST = 0, 1
MAX_PIXELS = 1 << 32  # decoded pixels a file may claim; a forged header must not make us allocate more
_NAME_RE = re.compile(r"^(.*?)(\d+)(\D*)$")


@dataclass(frozen=True)
class Header:
    prior_digest: str  # hex; the first 16 bytes are stored (unpack returns those 32 hex digits)
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
    seed_words: int
    seed_crc: int
    pixel_hash: bytes  # 8 bytes
    boot_codec: int = 0  # how tile 0 was coded into the seed (0: not at all, random seed)
    boot_bytes: int = 0
    names: list[str] = field(default_factory=list)
    payload_words: int = field(default=0, compare=False)  # filled in by unpack
    payload_crc: int = field(default=0, compare=False)

    def matches_prior(self, digest: str) -> bool:
        return bytes.fromhex(digest)[:16] == bytes.fromhex(self.prior_digest)[:16]


def _encode_names(names: list[str]) -> tuple[int, bytes]:
    """Consecutively numbered names (x-00000.png, x-00001.png, …) as a template, else a zlib list."""
    m = _NAME_RE.match(names[0]) if names else None
    if m and len(names) > 1:
        prefix, digits, suffix = m.groups()
        start, width = int(digits), len(digits)
        if all(n == f"{prefix}{start + i:0{width}d}{suffix}" for i, n in enumerate(names)):
            body = "\0".join([prefix, suffix, str(start), str(width)]).encode()
            return NAME_TEMPLATE, body
    return NAME_LIST, zlib.compress("\n".join(names).encode(), 9)


def _decode_names(kind: int, body: bytes, count: int) -> list[str]:
    try:
        if kind == NAME_TEMPLATE:
            prefix, suffix, start, width = body.decode().split("\0")
            start, width = int(start), int(width)
            return [f"{prefix}{start + i:0{width}d}{suffix}" for i in range(count)]
        if kind == NAME_LIST:
            names = zlib.decompress(body).decode().split("\n")
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
    kind, body = _encode_names(header.names)
    data = payload.tobytes()
    fixed = _FIXED.pack(
        MAGIC, VERSION, bytes.fromhex(header.prior_digest)[:16], header.steps, header.spacing,
        header.grid_eighths, header.threads, header.max_batch, header.count, header.channels,
        header.height, header.width, header.tile, header.seed_words, header.seed_crc, header.pixel_hash,
        header.boot_codec, header.boot_bytes, len(payload), zlib.crc32(data), kind, len(body),
    )
    head = fixed + body
    return head + _CRC.pack(zlib.crc32(head)) + data


def unpack(blob: bytes) -> tuple[Header, np.ndarray]:
    """File bytes → (Header, payload uint32 words); ValueError for anything but an intact file."""
    if len(blob) < 4 or blob[:3] != MAGIC:
        raise ValueError("not a diffcodec compressed file (bad magic)")
    if blob[3] != VERSION:
        raise ValueError(f"unsupported diffcodec file version {blob[3]} (this diffcodec reads version {VERSION})")
    if len(blob) < _FIXED.size:
        raise ValueError("compressed file is truncated (incomplete header)")
    f = _FIXED.unpack_from(blob)
    (_, _, digest, steps, spacing, grid8, threads, max_batch, count, c, h, w, tile,
     seed_words, seed_crc, pixel_hash, boot_codec, boot_bytes, payload_words, payload_crc, kind, names_len) = f
    if count == 0 or c == 0 or h == 0 or w == 0 or count * c * h * w > MAX_PIXELS:
        raise ValueError(f"compressed file is corrupted (it claims {count} images of {c}x{h}x{w})")
    end = _FIXED.size + names_len
    if len(blob) < end + _CRC.size:
        raise ValueError("compressed file is truncated (incomplete header)")
    if _CRC.unpack_from(blob, end)[0] != zlib.crc32(blob[:end]):
        raise ValueError("compressed file is corrupted (header checksum mismatch)")
    data = blob[end + _CRC.size :]
    if len(data) != 4 * payload_words:
        what = "truncated" if len(data) < 4 * payload_words else "followed by extra bytes"
        raise ValueError(f"compressed file is {what} ({len(data)} payload bytes, expected {4 * payload_words})")
    if zlib.crc32(data) != payload_crc:
        raise ValueError("compressed file is corrupted (payload checksum mismatch)")
    names = [check_name(n) for n in _decode_names(kind, blob[_FIXED.size : end], count)]
    header = Header(
        prior_digest=digest.hex(), steps=steps, spacing=spacing, grid_eighths=grid8, threads=threads,
        max_batch=max_batch, count=count, channels=c, height=h, width=w, tile=tile, seed_words=seed_words,
        seed_crc=seed_crc, pixel_hash=pixel_hash, boot_codec=boot_codec, boot_bytes=boot_bytes, names=names, payload_words=payload_words,
        payload_crc=payload_crc,
    )
    return header, np.frombuffer(data, dtype="<u4").astype(np.uint32)


def header_bytes(blob: bytes) -> int:
    """Size of the header of a packed file (everything before the payload)."""
    names_len = _FIXED.unpack_from(blob)[-1]
    return _FIXED.size + names_len + _CRC.size
