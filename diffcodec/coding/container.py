"""The lossless file format (``diffcodec compress``): a compact little-endian header, then the ANS words.

A 28×28 image costs a few hundred bytes, so the header is kept small: fixed-width fields only where
they must be (magic, version, digest, hashes), every count an unsigned LEB128 varint (one byte below
128, two below 16,384). Layout::

    magic b"DCL" (3) · format version 5 (1) · prior digest, first 8 bytes of its SHA-256 (8)
    varints: steps K, spacing (0 even, 1 front), grid G in eighths, threads, largest batch,
             images N, channels C, height H, width W, tile T (the prior's size; for an any-size
             prior the nominal tile, coding.lossless.lossless_tile), seed words (incl. seal),
             engine (0 float32, 1 onnxruntime: :data:`ENGINES`, the network engine both sides run),
             number B of classic (bootstrap) tiles and for each its codec (1 WebP lossless as a bare
             VP8L stream, 2 PNG) and byte length (coding.bootstrap), number R of ramp batch sizes
             and the R sizes (coding.lossless),
             payload words, names kind (0 template, 1 zlib list, 2 plain list), names length L
    names (L) · SHA-256 prefix of the names and the decoded pixels (8) · payload: 4·(payload words),
    the ANS stack bottom first, uint32 · CRC-32 of every byte before it (4)

The CRC covers the whole file, so any truncation or flipped bit is caught before decoding; the
content hash (coding.lossless.content_hash: shape, names, pixels) catches a decoder that
desynchronized (another prior under the same digest prefix, other float arithmetic) and a file whose
names were changed, CRC and all. Versions 3 and 4 are still read: version 3 files (before the engine
field) were all coded by float32 eager, which is what their missing field means; versions 3–4 cut
images for an any-size prior into padded squares, version 5 into tiles that just cover them. Stack order of the payload: see coding.bitsback (one Bit-Swap chain
per batch of tiles, batches pushed in order and popped in reverse).

A file is a decoder's input from anywhere, so :func:`unpack` checks every field against its legal
range (:data:`LIMITS`), against the file's own size, and the work it implies (tiles × steps and the
pixels to allocate, :func:`check_work`) before anything is decoded or allocated. Names are plain
file names ending in ``.png``, unique even on a case-insensitive file system
(:func:`unique_output_names` makes them so at compress time). Round trip (a test executes this)::

    >>> import numpy as np
    >>> h = Header(prior_digest="ab" * 32, steps=10, spacing=1, grid_eighths=24, threads=1,
    ...            max_batch=8, count=2, channels=1, height=8, width=8, tile=8, seed_words=3,
    ...            pixel_hash=b"\\0" * 8, boot=((1, 5),), names=["a-01.png", "a-02.png"])
    >>> words = np.arange(5, dtype=np.uint32)
    >>> blob = pack(h, words)
    >>> h2, w2 = unpack(blob)
    >>> h2 == h, bool((w2 == words).all()), len(blob) - 4 * len(words), ENGINES[h2.engine].value
    (True, True, 54, 'float32')
    >>> unique_output_names(["a", "a.png", "A.PNG", "b.bmp"])
    ['a-3.png', 'a.png', 'A-2.PNG', 'b.bmp.png']
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..defaults import CODING_ENGINES
from .bootstrap import MAX_BOOT_TILES
from .varint import encode_varint

MAGIC = b"DCL"
VERSION = 5  # 5: an any-size prior's tiles just cover the image; 4: the engine field; 3: names inside the content hash, every field range-checked (2 hashed the pixels alone)
READABLE_VERSIONS = (3, 4, 5)  # a version 3 file has no engine field: float32
ENGINES = CODING_ENGINES  # the engine field's codes (defaults.CODING_ENGINES, append only)
DIGEST_BYTES = 8
HASH_BYTES = 8
MAX_PIXELS = 1 << 30  # image or tile pixels a file may claim (1 GiB of uint8): a forged header must not make us allocate more
MAX_IMAGES = 1 << 20  # images per file (their names are built in memory)
MAX_TILE_STEPS = 1 << 30  # network evaluations a file may claim (tiles × steps; about 60 CPU-days of the default prior)
NAME_MAX = 255  # bytes of a file name (common file systems)
NAME_TEMPLATE, NAME_ZLIB, NAME_PLAIN = 0, 1, 2
_NAME_RE = re.compile(r"^(.*?)(\d+)(\D*)$")
_VARINT_FIELDS = ("steps", "spacing", "grid_eighths", "threads", "max_batch", "count", "channels", "height",
                  "width", "tile", "seed_words", "engine")  # engine: version 4 on
# Legal range of every varint field (inclusive); the seed and bootstrap sizes are checked against the
# payload instead. Grid G = grid_eighths/8 in 0.25..31.875 (coding.bitsback.LatentGrid needs G ≥ 0.25).
LIMITS = {
    "steps": (1, 65535), "spacing": (0, 1), "grid_eighths": (2, 255), "threads": (1, 255), "max_batch": (1, 65535),
    "count": (1, MAX_IMAGES), "channels": (1, 3), "height": (1, 65535), "width": (1, 65535), "tile": (1, 65535),
    "engine": (0, len(ENGINES) - 1),
}


@dataclass(frozen=True)
class Header:
    prior_digest: str  # hex; the first DIGEST_BYTES bytes are stored (unpack returns those)
    steps: int
    spacing: int  # 0 even, 1 front
    grid_eighths: int  # G = grid_eighths / 8
    threads: int  # torch threads, and ONNX Runtime's intra-op threads under that engine
    max_batch: int
    count: int  # images
    channels: int
    height: int
    width: int
    tile: int  # the prior's image size, or an any-size prior's nominal tile (coding.lossless.lossless_tile)
    seed_words: int  # words under the chains: bootstrap, pseudo-random top-up, seal
    pixel_hash: bytes  # HASH_BYTES bytes
    boot: tuple[tuple[int, int], ...]  # (codec, byte length) of each classic tile 0..B−1 at the bottom of the seed
    names: list[str] = field(default_factory=list)
    ramp: tuple[int, ...] = ()  # sizes of the first batches; the rest are max_batch (coding.lossless.batch_sizes)
    engine: int = 0  # the network engine, ENGINES[engine]
    payload_words: int = field(default=0, compare=False)  # filled in by unpack
    version: int = field(default=VERSION, compare=False)  # the file's format version, filled in by unpack

    def __post_init__(self):
        object.__setattr__(self, "prior_digest", self.prior_digest[: 2 * DIGEST_BYTES])

    def matches_prior(self, digest: str) -> bool:
        return bytes.fromhex(digest)[:DIGEST_BYTES] == bytes.fromhex(self.prior_digest)[:DIGEST_BYTES]


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
            if not (0 <= start < 10**20 and 0 <= width <= 20 and len(prefix) + len(suffix) <= NAME_MAX):
                raise ValueError("bad name template")
            return [f"{prefix}{start + i:0{width}d}{suffix}" for i in range(count)]
        if kind in (NAME_ZLIB, NAME_PLAIN):
            if kind == NAME_ZLIB:  # bounded: a small body must not inflate without limit
                inflater = zlib.decompressobj()
                body = inflater.decompress(body, count * (NAME_MAX + 1))
                if inflater.unconsumed_tail or not inflater.eof:
                    raise ValueError("names too long")
            names = body.decode().split("\n")
            if len(names) == count:
                return names
    except (ValueError, zlib.error, UnicodeDecodeError):
        pass
    raise ValueError("compressed file is corrupted (unreadable image names)")


def check_name(name: str) -> str:
    """A plain file name (no directories, no newlines) ending in .png, at most NAME_MAX bytes: what we
    write back into the output folder."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\n\0") or name.startswith("."):
        raise ValueError(f"unusable image name {name!r} (names must be plain file names)")
    if not name.lower().endswith(".png") or len(name.encode()) > NAME_MAX:
        raise ValueError(f"unusable image name {name[:40]!r} (names must end in .png, at most {NAME_MAX} bytes)")
    return name


def check_unique(names: list[str]) -> None:
    """ValueError if two names are equal ignoring case (one file on a case-insensitive file system)."""
    seen: dict[str, str] = {}
    for n in names:
        key = n.casefold()
        if key in seen:
            raise ValueError(f"two images share the output name {n!r} ({seen[key]!r})")
        seen[key] = n


def _fit(stem: str, tail: str) -> str:
    """stem + tail, the stem shortened (on a character boundary) so that the name fits NAME_MAX bytes."""
    while len((stem + tail).encode()) > NAME_MAX and stem:
        stem = stem[:-1]
    return stem + tail


def unique_output_names(names: list[str]) -> list[str]:
    """The names to store for images called ``names`` (input file names): each becomes a plain file
    name ending in .png (``a`` → ``a.png``, ``b.bmp`` → ``b.bmp.png``), and names that would collide,
    ignoring case, get ``-2``, ``-3``, … before the suffix. Names already usable as they are keep
    them first, then earlier images before later ones. Images with unusable names (folders,
    newlines) raise ValueError."""
    wanted = []
    for n in names:
        if not n or n in (".", "..") or any(c in n for c in "/\\\n\0"):
            raise ValueError(f"unusable image name {n!r} (names must be plain file names)")
        stem, ext = (n[:-4], n[-4:]) if n.lower().endswith(".png") else (n, ".png")
        wanted.append(_fit(stem.lstrip(".") or "image", ext))
    taken = {w.casefold() for w in wanted}
    out: list[str | None] = [None] * len(names)
    used: set[str] = set()
    next_k: dict[str, int] = {}  # per colliding name, the next suffix to try
    for i in sorted(range(len(names)), key=lambda i: wanted[i] != names[i]):  # stable: unchanged names first
        name = wanted[i]
        if name.casefold() in used:
            stem, ext, k = name[:-4], name[-4:], next_k.get(name.casefold(), 2)
            while (key := (alt := _fit(stem, f"-{k}{ext}")).casefold()) in taken or key in used:
                k += 1
            next_k[name.casefold()] = k + 1
            name = alt
        used.add(name.casefold())
        out[i] = name
    return out


def check_work(count: int, channels: int, height: int, width: int, tile: int, steps: int) -> int:
    """Number of tiles of ``count`` images tiled by ``tile``; ValueError if the pixels to allocate or the
    network evaluations (tiles × steps) exceed MAX_PIXELS / MAX_TILE_STEPS."""
    tiles = count * math.ceil(height / tile) * math.ceil(width / tile)
    pixels = max(count * height * width, tiles * tile * tile) * channels
    if pixels > MAX_PIXELS or tiles * steps > MAX_TILE_STEPS:
        raise ValueError(
            f"{count} images of {channels}x{height}x{width} ({tiles} tiles × {steps} steps) exceed this "
            f"diffcodec's limits ({MAX_PIXELS} pixels, {MAX_TILE_STEPS} tile-steps)"
        )
    return tiles


def pack(header: Header, payload: np.ndarray) -> bytes:
    """Header + payload words → file bytes."""
    payload = np.ascontiguousarray(payload, dtype="<u4")
    for n in header.names:
        check_name(n)
    check_unique(header.names)
    if len(header.names) != header.count:
        raise ValueError("one name per image is required")
    for f, (lo, hi) in LIMITS.items():
        if not lo <= getattr(header, f) <= hi:
            raise ValueError(f"header field {f} = {getattr(header, f)} is outside {lo}..{hi}")
    if len(header.pixel_hash) != HASH_BYTES:
        raise ValueError(f"pixel hash must be {HASH_BYTES} bytes")
    if any(not 1 <= n <= header.max_batch for n in header.ramp):
        raise ValueError(f"batch sizes must be in 1..{header.max_batch}")
    if not 1 <= len(header.boot) <= MAX_BOOT_TILES:
        raise ValueError(f"a file starts with 1..{MAX_BOOT_TILES} bootstrap tiles, got {len(header.boot)}")
    kind, body = _encode_names(header.names)
    values = {f: getattr(header, f) for f in _VARINT_FIELDS}
    if not 4 <= header.version <= VERSION:  # version 3 had no engine field
        raise ValueError(f"cannot write file version {header.version}")
    out = MAGIC + bytes([header.version]) + bytes.fromhex(header.prior_digest)[:DIGEST_BYTES]
    out += varint_fields(values, header.boot, header.ramp, len(payload), kind, len(body))
    out += body + header.pixel_hash + payload.tobytes()
    return out + struct.pack("<I", zlib.crc32(out))


def varint_fields(values: dict, boot, ramp, payload_words: int, names_kind: int, names_len: int) -> bytes:
    """The varint part of the header: the _VARINT_FIELDS in order, the bootstrap tiles (count, then
    codec and bytes of each), the ramp (count, then sizes), payload words, names kind and names length."""
    fields = [values[f] for f in _VARINT_FIELDS] + [len(boot), *(x for pair in boot for x in pair)]
    fields += [len(ramp), *ramp, payload_words, names_kind, names_len]
    return b"".join(encode_varint(v) for v in fields)


def unpack(blob: bytes) -> tuple[Header, np.ndarray]:
    """File bytes → (Header, payload uint32 words); ValueError for anything but an intact file."""
    if blob[:2] == b"DP":  # coding.progressive_file's magic
        raise ValueError("this is a progressive file from `diffcodec encode`; decode it with `diffcodec decode`")
    if len(blob) < 4 or blob[:3] != MAGIC:
        raise ValueError("not a diffcodec compressed file (bad magic)")
    if blob[3] not in READABLE_VERSIONS:
        raise ValueError(f"unsupported diffcodec file version {blob[3]} (this diffcodec reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))})")
    r = _Reader(blob, 4)
    digest = r.take(DIGEST_BYTES)
    values = {f: r.varint() for f in (_VARINT_FIELDS if blob[3] >= 4 else _VARINT_FIELDS[:-1])}
    values.setdefault("engine", 0)  # version 3: float32
    num_boot = r.varint()
    if not 1 <= num_boot <= MAX_BOOT_TILES:
        raise ValueError(f"compressed file is corrupted (it claims {num_boot} bootstrap tiles)")
    boot = tuple((r.varint(), r.varint()) for _ in range(num_boot))
    num_ramp = r.varint()
    if num_ramp > len(blob) - r.pos:  # every size takes a byte at least
        raise ValueError(f"compressed file is truncated or corrupted (it claims {num_ramp} batch sizes)")
    ramp = tuple(r.varint() for _ in range(num_ramp))
    payload_words, kind, names_len = r.varint(), r.varint(), r.varint()
    expected = r.pos + names_len + HASH_BYTES + 4 * payload_words + 4
    if len(blob) != expected:
        what = "truncated" if len(blob) < expected else "followed by extra bytes"
        raise ValueError(f"compressed file is {what} ({len(blob)} bytes, its header says {expected})")
    if struct.unpack_from("<I", blob, len(blob) - 4)[0] != zlib.crc32(blob[:-4]):
        raise ValueError("compressed file is corrupted (checksum mismatch)")
    _check_fields(values, boot, ramp, payload_words, kind)
    n = values["count"]
    names = [check_name(x) for x in _decode_names(kind, r.take(names_len), n)]
    try:
        check_unique(names)
    except ValueError as err:
        raise ValueError(f"compressed file is corrupted ({err})") from None
    pixel_hash = r.take(HASH_BYTES)
    data = r.take(4 * payload_words)
    header = Header(prior_digest=digest.hex(), **values, pixel_hash=pixel_hash, boot=boot, names=names, ramp=ramp,
                    payload_words=payload_words, version=blob[3])
    return header, np.frombuffer(data, dtype="<u4").astype(np.uint32)



def _check_fields(v: dict, boot, ramp: tuple[int, ...], payload_words: int, names_kind: int) -> None:
    """Every header field within its legal range, consistent with the payload size, and the work it
    implies within this diffcodec's limits; ValueError naming the first field that is not."""
    for f, (lo, hi) in LIMITS.items():
        if not lo <= v[f] <= hi:
            raise ValueError(f"compressed file is corrupted (header field {f} = {v[f]} is outside {lo}..{hi})")
    if v["channels"] == 2:
        raise ValueError("compressed file is corrupted (header field channels = 2; expected 1 or 3)")
    if names_kind not in (NAME_TEMPLATE, NAME_ZLIB, NAME_PLAIN):
        raise ValueError(f"compressed file is corrupted (unknown names kind {names_kind})")
    boot_words = sum(-(-nbytes // 4) for _, nbytes in boot)
    if any(codec not in (1, 2) or nbytes < 1 for codec, nbytes in boot):
        raise ValueError(f"compressed file is corrupted (bootstrap tiles {list(boot)})")
    if not 0 < boot_words < v["seed_words"] <= payload_words:
        raise ValueError(
            f"compressed file is corrupted (bootstrap of {boot_words} words, seed of {v['seed_words']} "
            f"words, payload of {payload_words} words)"
        )
    try:
        tiles = check_work(v["count"], v["channels"], v["height"], v["width"], v["tile"], v["steps"])
    except ValueError as err:
        raise ValueError(f"compressed file is corrupted or too large ({err})") from None
    if len(boot) > tiles or any(not 1 <= n <= v["max_batch"] for n in ramp) or sum(ramp) > tiles - len(boot):
        raise ValueError(f"compressed file is corrupted ({len(boot)} bootstrap tiles and batch sizes "
                         f"{list(ramp[:8])}… do not fit {tiles} tiles)")
