"""Lossless compression of image sets with a diffusion prior: tiles → batches → bits-back → file.

Stack order of a file: the seed at the bottom is tiles 0..B−1 coded by a cheap classic codec
(coding.bootstrap: WebP lossless or PNG; B ≥ 1, as many as pay for themselves, :func:`_start`),
topped up from below with pseudo-random words when the first pops need more; then the encoder
pushes batch 1, batch 2, … of the remaining tiles, each batch one Bit-Swap chain (coding.bitsback);
the decoder pops the last batch first and finally finds the classic files as the seed. Batch sizes
grow from one tile as fast as the bits on the stack allow (:func:`next_batch_size`, measured by the
encoder on the data at hand, recorded in the header up to the first run of ``max_batch``): each
batch mostly pops bits that earlier batches pushed, so the initial bits (paid once per file) are at
most about one tile's dip whatever the data, and a file of one tile is the classic stream plus the
header (about 50 bytes). Random seed words that no pop reached are trimmed from the bottom before
writing.

Determinism: encoder and decoder evaluate the network on identical batches (same tiles, same order),
through the same engine (float32 eager or ONNX Runtime, recorded in the file: engines.coding_engine),
with the torch thread count and ONNX Runtime's intra-op threads pinned to the value recorded in the
file (CPU kernels give thread-count dependent float32 results), and snap the coder's parameters to
2^-20 (coding.bitsback). A decoder that still desynchronizes fails on the seed or pixel checksums and
returns no images.

Round trip with a tiny random prior (a test executes this)::

    >>> import numpy as np, torch
    >>> from diffcodec.prior import Prior, PriorConfig
    >>> from diffcodec.unet import UNetConfig
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> prior = Prior(PriorConfig(unet=UNetConfig(image_size=8, base_channels=4, channel_mult=(1,),
    ...     num_res_blocks=1, attention_resolutions=(), dropout=0.0), num_timesteps=20,
    ...     schedule="cosine", variance="small")).eval()
    >>> prior.digest = "00" * 32
    >>> images = np.random.default_rng(0).integers(0, 256, (3, 1, 10, 9), dtype=np.uint8)
    >>> params = CodecParams(steps=4, threads=1)
    >>> blob, stats = compress(prior, images, ["a.png", "b.png", "c.png"], params)
    >>> out, names, _ = decompress(prior, blob)   # the engine the file records (float32 here)
    >>> bool((out == images).all()), names
    (True, ['a.png', 'b.png', 'c.png'])
    >>> decompress(prior, blob, engine="onnxruntime")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: file was made with engine float32; decoding it with engine onnxruntime would ...
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..defaults import CODEC_SPACING, CODEC_STEPS, DEFAULT_GRID, DEFAULT_MAX_BATCH, Engine
from ..diffusion import as_pixels
from ..engines import coding_engine, coding_view, decoding_engine
from ..prior import Prior
from ..schedule import Spacing
from .ans import MARGIN_WORDS, WORD_BITS, Stack
from .bitsback import LatentGrid, decode_batch, encode_batch
from .bootstrap import BOOT_NAMES, MAX_BOOT_TILES, classic_tile, seed_words, unseed
from .container import ENGINES, MAX_IMAGES, VERSION, Header, check_work, pack, unique_output_names, unpack

RAMP_SAFETY = 1.25  # a new batch may dip this much deeper per tile than the deepest batch so far
_SPACINGS = [Spacing.EVEN, Spacing.FRONT]


@dataclass(frozen=True)
class CodecParams:
    steps: int = CODEC_STEPS
    spacing: Spacing = CODEC_SPACING
    grid: float = DEFAULT_GRID  # G, latent grid points per standard deviation (multiple of 1/8)
    # threads for the network (torch's, and ONNX Runtime's intra-op threads), recorded in the file and used
    # again by the decoder (CPU kernels give thread-count dependent float32 results). 1 by default:
    # reproducible on any machine, and pinned multi-threading on a busy CPU was measured 3x slower;
    # 0 = torch's current setting.
    threads: int = 1
    max_batch: int = DEFAULT_MAX_BATCH
    # how the network runs (defaults.CODING_ENGINES; AUTO: the measured default for the prior's device),
    # recorded in the file; the decoder runs the same one. The library default is the float32 reference.
    engine: Engine = Engine.FLOAT32

    def resolved(self, prior: Prior) -> "CodecParams":
        threads = self.threads or torch.get_num_threads()
        if not 1 <= threads <= 255:
            raise ValueError(f"threads must be in 1..255, got {threads}")
        if not 1 <= self.max_batch <= 65535:
            raise ValueError(f"max batch must be in 1..65535, got {self.max_batch}")
        if self.grid * 8 != round(self.grid * 8) or not 2 <= self.grid * 8 <= 255:
            raise ValueError(f"grid G must be a multiple of 1/8 in 0.25..31.875, got {self.grid}")
        prior.schedule(self.steps, self.spacing)  # validates steps
        engine = coding_engine(self.engine, next(prior.parameters(), torch.empty(0)).device)
        return CodecParams(self.steps, Spacing(self.spacing), float(self.grid), threads, self.max_batch, engine)


@dataclass
class CodecStats:
    """What a compress or decompress call did. Bits are whole-file figures, not per image.

    file = header + payload, payload = seed + chain: the seed holds the classic files of tiles
    0..B−1 (the bootstrap, padded to whole words) and the initial bits (pseudo-random words that the
    first pops needed, plus the seal word); the chain is everything the Bit-Swap chains of tiles
    B..n−1 added on top, to be compared with their VLB. Header and initial bits are the fixed costs
    of a file.
    """

    num_images: int
    num_tiles: int
    dims_per_image: int  # C·H·W of the original images
    file_bits: int  # everything
    header_bits: int
    payload_bits: int  # the ANS stack, initial bits included
    initial_bits: int  # pseudo-random seed words kept under the bootstrap tile, plus the seal word
    bootstrap_bits: int  # the classic files of tiles 0..B−1 at the bottom of the seed (real information)
    bootstrap_tiles: int  # B ≥ 1
    seed_bits: int  # the whole seed: classic files padded to words + initial bits
    bootstrap_codec: str  # "WebP lossless", "PNG" or both
    seconds: float
    network_seconds: float  # inside the prior (network and its float64 head)
    names: list[str]  # the images' names as stored in the file (made unique by compress)
    engine: Engine = Engine.FLOAT32  # the network engine that ran (the file records it)

    @property
    def chain_bits(self) -> int:
        """Bits the chains of tiles B..n−1 added above the seed (0 when every tile is classic)."""
        return self.payload_bits - self.seed_bits

    @property
    def coder_share(self) -> float | None:
        """Fraction of the time spent outside the network; None when the network never ran (one tile)."""
        if self.network_seconds <= 0 or self.seconds <= 0:
            return None
        return 1.0 - self.network_seconds / self.seconds


@contextlib.contextmanager
def pinned_threads(n: int):
    """Run torch with exactly ``n`` intra-op threads, restoring the previous setting afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def batch_sizes(total: int, max_batch: int, ramp: tuple[int, ...] = ()) -> list[int]:
    """Tiles per batch: the ``ramp`` (recorded in the file), then batches of ``max_batch`` (the last
    one smaller) until ``total`` tiles are covered. ValueError if the ramp does not fit."""
    if max_batch < 1:
        raise ValueError(f"max batch must be >= 1, got {max_batch}")
    if any(not 1 <= n <= max_batch for n in ramp) or sum(ramp) > total:
        raise ValueError(f"batch sizes {list(ramp[:8])}… do not fit {total} tiles in batches of at most {max_batch}")
    rest = total - sum(ramp)
    return [*ramp, *[max_batch] * (rest // max_batch), *([rest % max_batch] if rest % max_batch else [])]


def next_batch_size(level_bits: int, dip_bits_per_tile: float | None, remaining: int, max_batch: int) -> int:
    """How many tiles the next batch may hold so that its pops stay within the bits on the stack.

    A Bit-Swap chain pops x_1 and every x_k before it pushes x_K with N(0, I) at its end, so during a
    batch of n tiles the stack dips by about n × (one tile's dip) before ending n × (one tile's net
    cost, its VLB) higher. Measured on the default prior (100 front steps): the dip is 5.5–7.5
    bits/dim per tile, the net cost 3.2 bits/dim on Fashion-MNIST but 2.1 on mostly black digit-like
    images, so a fixed growth rule that suits one data set overdraws the stack on the other (a fixed
    ramp of +50 % per batch cost 118,112 initial bits on 500 digit-like images). Batches sized to the
    stack's level with the largest dip per tile seen so far (× RAMP_SAFETY) pop bits that earlier
    batches pushed instead of fresh seed words, so the initial bits stay near one tile's dip whatever
    the data. The first batch holds one tile (nothing measured yet).
    """
    if dip_bits_per_tile is None:
        return 1
    fits = int((level_bits - MARGIN_WORDS * WORD_BITS) / (RAMP_SAFETY * max(dip_bits_per_tile, 1.0)))
    return max(1, min(fits, max_batch, remaining))


def ramp_of(sizes: list[int], max_batch: int) -> tuple[int, ...]:
    """The shortest prefix of ``sizes`` after which :func:`batch_sizes` gives the rest (what a file records)."""
    i = len(sizes)
    if i and sizes[-1] < max_batch:
        i -= 1
    while i and sizes[i - 1] == max_batch:
        i -= 1
    while batch_sizes(sum(sizes[i:]), max_batch) != sizes[i:]:  # e.g. a batch below max_batch after full ones
        i += 1
    return tuple(sizes[:i])


LOSSLESS_TILE = 64  # px: the nominal tile an any-size prior chains (see lossless_tile)


def tile_field(prior: Prior, height: int, width: int, version: int | None = None) -> int:
    """What a file's tile field holds: the prior's size; for an any-size prior the nominal tile T
    (versions 3–4: the side of its squares)."""
    if prior.any_size and (VERSION if version is None else version) >= 5:
        return LOSSLESS_TILE
    return lossless_tile(prior, height, width, version)[0]


def lossless_tile(prior: Prior, height: int, width: int, version: int | None = None) -> tuple[int, int]:
    """The tile (a, b) ``compress`` codes images of height×width with.

    A fixed-size prior: its own square, images padded to whole tiles. An any-size prior (file
    version 5 on): the image cut into ⌈H/T⌉ × ⌈W/T⌉ equal tiles (T = LOSSLESS_TILE) each just large
    enough to cover it, so the padding is less than one row per row of tiles and one column per
    column of tiles. Versions 3–4 used squares of min(T, longer side), padded: a 341-px-wide photo
    paid for 43 replicated columns (12.6 % more pixels, coded at about the rate of real ones).

    Bits-back cannot code one image whole in a single file: the chain first pops about three bits
    per dimension of seed (coding.bitsback) before it pushes anything back, so one image alone would
    pay close to its own size in initial bits. Tiles chain: the classic seed of the first tiles pays
    the dip once and later tiles ride on the bits earlier ones pushed. The network still sees each
    tile whole (no seam inside a tile); the progressive coder codes whole images (:func:`tile_shape`).
    """
    if not prior.any_size:
        return prior.image_shape[1], prior.image_shape[2]
    if (VERSION if version is None else version) < 5:
        side = min(LOSSLESS_TILE, max(height, width))
        return side, side
    rows, cols = math.ceil(height / LOSSLESS_TILE), math.ceil(width / LOSSLESS_TILE)
    return math.ceil(height / rows), math.ceil(width / cols)


def tile_shape(prior: Prior, height: int, width: int) -> tuple[int, int]:
    """The tile the progressive coder uses for an image of height×width: the whole image for an
    any-size prior, else the prior's square size."""
    return (height, width) if prior.any_size else (prior.image_shape[1], prior.image_shape[2])


def to_tiles(images: np.ndarray, tile: int | tuple[int, int]) -> np.ndarray:
    """[N, C, H, W] → [N·⌈H/a⌉·⌈W/b⌉, C, a, b] for tile (a, b) (an int: square), row-major tiles,
    edges padded by replication."""
    a, b = (tile, tile) if isinstance(tile, int) else tile
    n, c, h, w = images.shape
    th, tw = math.ceil(h / a), math.ceil(w / b)
    padded = np.pad(images, ((0, 0), (0, 0), (0, th * a - h), (0, tw * b - w)), mode="edge")
    tiles = padded.reshape(n, c, th, a, tw, b).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(tiles.reshape(n * th * tw, c, a, b))


def from_tiles(tiles: np.ndarray, n: int, h: int, w: int) -> np.ndarray:
    """Inverse of :func:`to_tiles` (crops the padding)."""
    _, c, a, b = tiles.shape
    th, tw = math.ceil(h / a), math.ceil(w / b)
    padded = tiles.reshape(n, th, tw, c, a, b).transpose(0, 3, 1, 4, 2, 5).reshape(n, c, th * a, tw * b)
    return np.ascontiguousarray(padded[:, :, :h, :w])


def content_hash(images: np.ndarray, names: list[str]) -> bytes:
    """First 8 bytes of SHA-256 over the shape, the names and the pixels: what a decoder checks last."""
    h = hashlib.sha256(str(list(images.shape)).encode())
    h.update("\n".join(names).encode() + b"\0")
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    return h.digest()[:8]


class _Network:
    """p(x_j|x_{j+1}) from the prior, timed, as the ReverseFn the bits-back coder calls."""

    def __init__(self, prior: Prior, schedule, bar):
        self.prior, self.schedule, self.bar = prior, schedule, bar
        self.device = next(prior.parameters(), torch.empty(0)).device
        self.seconds = 0.0

    @torch.no_grad()
    def __call__(self, x_k: np.ndarray, j: int):
        t0 = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(x_k)).to(self.device)
        k = torch.full((x.shape[0],), j, dtype=torch.long, device=self.device)
        rev = self.prior.reverse(x, k, self.schedule)
        out = rev.mean.cpu().numpy(), rev.log_variance.cpu().numpy()
        self.seconds += time.perf_counter() - t0
        self.bar.update(x.shape[0])
        return out


def check_images(prior: Prior, images) -> np.ndarray:
    """Images [N, C, H, W] the prior can code (its channel count, sizes the file formats hold) as uint8; ValueError naming the problem."""
    images = np.asarray(as_pixels(images).numpy())
    c = prior.image_shape[0]
    if images.shape[1] != c:
        kind = {1: "grayscale", 3: "RGB"}
        raise ValueError(f"images are {kind.get(images.shape[1], images.shape[1])} but the prior codes {kind[c]} images")
    if len(images) == 0 or images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError("no pixels to compress")
    if max(images.shape[2:]) >= 2**16:
        raise ValueError(f"images of {images.shape[3]}x{images.shape[2]} pixels are too large for the file format (max 65535)")
    if len(images) > MAX_IMAGES:
        raise ValueError(f"{len(images)} images are more than one file holds ({MAX_IMAGES}); split them into several files")
    return images


def compress(prior: Prior, images, names: list[str], params: CodecParams = CodecParams(), progress: bool = False):
    """Images [N, C, H, W] uint8 → (file bytes, CodecStats). Images are coded as tiles of :func:`lossless_tile`."""
    t0 = time.perf_counter()
    images = check_images(prior, images)
    if prior.digest is None:
        raise ValueError("the prior has no digest (load it with diffcodec.checkpoint.load_prior)")
    if len(names) != len(images):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    names = unique_output_names(list(names))
    params = params.resolved(prior)
    tile = lossless_tile(prior, images.shape[2], images.shape[3])
    field = tile_field(prior, images.shape[2], images.shape[3])
    check_work(len(images), images.shape[1], images.shape[2], images.shape[3], field, params.steps)
    schedule = prior.schedule(params.steps, params.spacing)
    grid = LatentGrid.build(schedule, params.grid)
    tiles = to_tiles(images, tile)
    with pinned_threads(params.threads), tqdm(total=(len(tiles) - 1) * params.steps, desc="compress",
                                              unit="tile-step", disable=not progress, leave=False) as bar:
        net = _Network(coding_view(prior, params.engine, params.threads), schedule, bar)
        boots, stack, sizes, dip = _start(tiles, grid, net)
        start = len(boots) + sum(sizes)
        while start < len(tiles):
            n = next_batch_size(stack.level_bits(), dip, len(tiles) - start, params.max_batch)
            level = stack.mark_low_water()
            encode_batch(stack, grid, net, tiles[start : start + n])
            dip = max(dip or 0.0, (level - stack.low_water_bits) / n)
            sizes.append(n)
            start += n
    trim = min(stack.untouched_bottom_words(), stack.prepended_words)  # never the bootstrap words
    boot_bits = WORD_BITS * len(seed_words(boots))
    payload = stack.words()[trim:]
    seed = stack.seed[trim:]
    n, c, h, w = images.shape
    header = Header(
        prior_digest=prior.digest, steps=params.steps, spacing=_SPACINGS.index(params.spacing),
        grid_eighths=round(params.grid * 8), threads=params.threads, max_batch=params.max_batch, count=n,
        channels=c, height=h, width=w, tile=field, seed_words=len(seed) + 1,
        pixel_hash=content_hash(images, names), boot=tuple((codec, len(data)) for codec, data in boots), names=names,
        ramp=ramp_of(sizes, params.max_batch), engine=ENGINES.index(params.engine), version=VERSION,
    )
    blob = pack(header, payload)
    stats = CodecStats(
        num_images=n, num_tiles=len(tiles), dims_per_image=c * h * w, file_bits=8 * len(blob),
        header_bits=8 * (len(blob) - 4 * len(payload)), payload_bits=WORD_BITS * len(payload),
        initial_bits=WORD_BITS * header.seed_words - boot_bits, bootstrap_bits=8 * sum(len(d) for _, d in boots),
        bootstrap_tiles=len(boots), seed_bits=WORD_BITS * header.seed_words,
        bootstrap_codec="/".join(sorted({BOOT_NAMES[codec] for codec, _ in boots})),
        seconds=time.perf_counter() - t0, network_seconds=net.seconds, names=names, engine=params.engine,
    )
    return blob, stats


def _start(tiles: np.ndarray, grid: LatentGrid, net) -> tuple[list[tuple[int, bytes]], Stack, list[int], float | None]:
    """Choose the classic tiles that seed the stack and code the first chained tile: (classic files,
    stack, batch sizes so far, dip per tile so far).

    Tile 0 is always classic. Then tile b is chained alone on a stack seeded with tiles 0..b−1 (a
    trial): if its dip went below the seed (initial bits) by more than coding it classically would
    cost in excess of its chain bits, it joins the seed instead and tile b+1 is tried
    (coding.bootstrap); otherwise the trial is the first batch. Every further classic tile thus
    replaces more initial bits than its own excess.
    """
    boots = [classic_tile(tiles[0])]
    while True:
        stack = Stack.over(seed_words(boots))
        b = len(boots)
        if b == len(tiles):
            return boots, stack, [], None
        level = stack.mark_low_water()
        encode_batch(stack, grid, net, tiles[b : b + 1])
        deficit = max(0, -stack.low_water_bits)
        candidate = classic_tile(tiles[b])
        excess = 8 * len(candidate[1]) - (stack.level_bits() - level)  # classic bits beyond the chain's
        if b < MAX_BOOT_TILES and deficit > max(0, excess):
            boots.append(candidate)
            continue
        return boots, stack, [1], float(level - stack.low_water_bits)


def read_header(blob: bytes) -> Header:
    return unpack(blob)[0]


def decompress(prior: Prior, blob: bytes, progress: bool = False, engine: Engine | str | None = None):
    """File bytes → (images [N, C, H, W] uint8, names, CodecStats). ValueError unless bit-exact.

    The network runs through the engine the file records (engines.decoding_engine); ``engine``, when
    given (not AUTO), must name that one (ValueError otherwise: no other engine recomputes the encoder's outputs).
    """
    t0 = time.perf_counter()
    header, payload = unpack(blob)
    file_engine = decoding_engine(ENGINES[header.engine], next(prior.parameters(), torch.empty(0)).device, engine)
    if prior.digest is None or not header.matches_prior(prior.digest):
        raise ValueError(
            f"file was made with another prior (digest {header.prior_digest[:16]}…, this prior is "
            f"{(prior.digest or 'unknown')[:16]}…); pass the right one with --prior"
        )
    c = prior.image_shape[0]
    a, b = lossless_tile(prior, header.height, header.width, header.version)
    field = tile_field(prior, header.height, header.width, header.version)
    if header.channels != c or header.tile != field:
        raise ValueError(
            f"compressed file is inconsistent with its prior (it holds {header.channels}-channel images tiled by "
            f"{header.tile}, the prior codes {c}-channel images tiled by {field})"
        )
    schedule = prior.schedule(header.steps, _SPACINGS[header.spacing])
    grid = LatentGrid.build(schedule, header.grid_eighths / 8)
    num_tiles = check_work(header.count, c, header.height, header.width, header.tile, header.steps)
    num_boot = len(header.boot)
    boot_words = sum(-(-nbytes // 4) for _, nbytes in header.boot)
    sizes = batch_sizes(num_tiles - num_boot, header.max_batch, header.ramp)
    tiles = np.empty((num_tiles, c, a, b), dtype=np.uint8)
    stack = Stack.from_words(payload)
    with pinned_threads(header.threads), tqdm(total=(num_tiles - num_boot) * header.steps, desc="decompress",
                                              unit="tile-step", disable=not progress, leave=False) as bar:
        net = _Network(coding_view(prior, file_engine, header.threads), schedule, bar)
        end = num_tiles
        for n in reversed(sizes):
            tiles[end - n : end] = decode_batch(stack, grid, net, (n, c, a, b))
            end -= n
    seed = stack.words(unseal=True)
    if len(seed) + 1 != header.seed_words:
        raise ValueError("decoding desynchronized (the seed did not come back); no images written")
    tiles[:num_boot] = unseed(seed[len(seed) - boot_words :], list(header.boot), (c, a, b))
    images = from_tiles(tiles, header.count, header.height, header.width)
    if content_hash(images, header.names) != header.pixel_hash:
        raise ValueError("decoding desynchronized or names altered (decoded pixels and names fail their checksum); no images written")
    stats = CodecStats(
        num_images=header.count, num_tiles=num_tiles, dims_per_image=c * header.height * header.width,
        file_bits=8 * len(blob), header_bits=8 * (len(blob) - 4 * len(payload)), payload_bits=WORD_BITS * len(payload),
        initial_bits=WORD_BITS * (header.seed_words - boot_words), bootstrap_bits=8 * sum(n for _, n in header.boot),
        bootstrap_tiles=num_boot, seed_bits=WORD_BITS * header.seed_words,
        bootstrap_codec="/".join(sorted({BOOT_NAMES[codec] for codec, _ in header.boot})),
        seconds=time.perf_counter() - t0, network_seconds=net.seconds, names=header.names, engine=file_engine,
    )
    return images, header.names, stats

