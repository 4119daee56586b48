"""Progressive coding with a diffusion prior (DDPM section 4.3, Algorithms 3 and 4).

The receiver gets x_K, then x_{K−1}, …, x_1, and can show x̂_0(x_k) after every step; the last
segment sends x_0 itself, so the whole file decodes to the exact image. Each x_{k−1} is an
(approximate) sample of q(x_{k−1}|x_k, x_0) sent against p_θ(x_{k−1}|x_k) by reverse channel coding
(coding.rcc) on randomness both sides regenerate; x_0 goes with the exact discretized decoder
P(x_0|x_1) through a range coder. Unlike bits-back, a prefix of this stream costs about the
cumulative KL, not the latents' entropy.

Stream order (one queue: first written, first read; bits most significant first):

    header (coding.progressive_file)
    x_K: free when KL(q(x_K|x_0) ‖ N(0, I)) < 0.1 bit for any image (the decoder draws it from the
         shared seed); else one chunk
    for k = K .. 2, for every tile, for every chunk c of that tile's step:
         octave of i*_c (Huffman) · low bits of i*_c          → x_{k−1} = μ_p + σ_p ⊙ ε_{i*}
    zero bits to the next byte
    x_0 of every tile under P(x_0|x_1), range coded (constriction's queue coder), whole words
    CRC-32 of the file and of the pixels it decodes to

Step framing costs bits, not bytes: the decoder knows how many chunks each tile's step has and what
index code each chunk uses from quantities it already holds. Chunks: each dimension's expected KL
under the prior, ê_j = max(½ log(σ_p,j²/σ_q²), ε), is known to both sides (the learned variance says
where the prior is unsure); scaled by a per-tile calibration r (how many bits the previous steps
actually cost per unit of ê, an average both sides update from the received code lengths), it
predicts the step's KL. The step gets n = round(predicted/κ) chunks of about κ = ``chunk_bits`` bits
each, formed by cutting a seeded permutation of the dimensions at equal shares of ê, and each chunk's
index code is tuned to its predicted KL. A file cut anywhere decodes to its last complete step.

Determinism: encoder and decoder run the network on the same batches with the thread count recorded
in the file, snap μ_p and σ_p to multiples of 2^-20 (coding.bitsback.snap) and regenerate the same
float32 candidates, so both hold bit-identical latents. The final CRC covers the decoded pixels, so
a decoder that desynchronizes fails loudly on a complete file.

Round trip with a tiny random prior (a test executes this)::

    >>> import numpy as np, torch
    >>> from diffcodec.prior import Prior, PriorConfig
    >>> from diffcodec.unet import UNetConfig
    >>> _ = torch.manual_seed(0)
    >>> prior = Prior(PriorConfig(unet=UNetConfig(image_size=8, base_channels=4, channel_mult=(1,),
    ...     num_res_blocks=1, attention_resolutions=(), dropout=0.0, learn_variance=True),
    ...     num_timesteps=20, schedule="cosine")).eval()
    >>> prior.digest = "00" * 32
    >>> image = np.random.default_rng(0).integers(0, 256, (1, 8, 8), dtype=np.uint8)
    >>> enc = encode(prior, image, ProgressiveParams(steps=5))
    >>> bool((decode(prior, enc.data).image == image).all())
    True
    >>> part = decode(prior, enc.data[: len(enc.data) // 2])        # any prefix is a picture
    >>> part.complete, part.image.shape
    (False, (1, 8, 8))
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field

import constriction
import numpy as np
import torch
from tqdm.auto import tqdm

from ..defaults import CODEC_SPACING, CODEC_STEPS
from ..diffusion import as_pixels, model_to_pixels, pixels_to_model
from ..prior import Prior
from ..schedule import Spacing
from . import progressive_file as pf
from .bits import BitReader, BitWriter, OutOfBits
from .bitsback import decoder_probs, snap
from .lossless import from_tiles, pinned_threads, to_tiles
from .rcc import IndexCode, candidate, kl_nats_per_dim, log_weight_coefs, seed_of, select

MIN_EXPECTED_NATS = 1e-4  # floor of ê_j: fixed-variance priors give ê = 0 everywhere
FREE_BITS = 0.1  # a step whose KL is provably below this is drawn from p for free (x_K)
CHUNK_OVERHEAD_BITS = 1.0  # subtracted per chunk when turning code lengths into a KL estimate
CALIBRATION_START = 0.4  # r before any step was seen
CALIBRATION_RATE = 0.5  # weight of the newest step in the running log-average of r
_SPACINGS = [Spacing.EVEN, Spacing.FRONT]
_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


@dataclass(frozen=True)
class ProgressiveParams:
    steps: int = CODEC_STEPS
    spacing: Spacing = CODEC_SPACING
    chunk_bits: float = 8.0  # κ: target KL per chunk (bits); bigger chunks cost fewer bits, exponentially more candidates
    margin: float = 4.0  # candidates searched per chunk: 2^⌈KL + margin⌉ (encoder only; larger = less bias, slower)
    max_search_bits: int = 20  # never more than 2^this candidates per chunk
    threads: int = 1  # torch threads for the network, recorded in the file
    max_batch: int = 64  # tiles per network call, recorded in the file

    def resolved(self, prior: Prior) -> "ProgressiveParams":
        if not 1 <= self.threads <= 255:
            raise ValueError(f"threads must be in 1..255, got {self.threads}")
        if not 1 <= self.max_batch <= 65535:
            raise ValueError(f"max batch must be in 1..65535, got {self.max_batch}")
        if self.chunk_bits * 4 != round(self.chunk_bits * 4) or not 1 <= self.chunk_bits <= 24:
            raise ValueError(f"chunk bits must be a multiple of 1/4 in 1..24, got {self.chunk_bits}")
        if not 0 <= self.margin <= 16:
            raise ValueError(f"candidate margin must be in 0..16 bits, got {self.margin}")
        if not 10 <= self.max_search_bits <= 30:
            raise ValueError(f"max search bits must be in 10..30, got {self.max_search_bits}")
        if self.steps < 2:
            raise ValueError(f"progressive coding needs at least 2 steps, got {self.steps}")
        prior.schedule(self.steps, self.spacing)  # validates steps against the prior
        return ProgressiveParams(self.steps, Spacing(self.spacing), float(self.chunk_bits), float(self.margin),
                                 int(self.max_search_bits), int(self.threads), int(self.max_batch))


@dataclass
class StepRecord:
    """The state after ``n`` reverse steps (x_{K−n} sent; n = K means x_0 itself)."""

    n: int
    timestep: int  # original timestep of the latent just sent (0 for x_0)
    file_bytes: int  # a file stopped here: header, stream, padding and CRC
    stream_bits: int  # cumulative bits of the chunk indices (and of x_0 at n = K)
    kl_bits: float  # cumulative KL of the steps sent so far, Σ KL(q‖p) (at n = K: + −log2 P(x_0|x_1))
    sq_err: float  # Σ over pixels of (reconstruction − x_0)², 0–255 scale, reconstruction x̂_0(x_{K−n}) rounded to pixels
    chunks: int = 0  # chunks in this step (all tiles)
    candidates: int = 0  # candidates searched in this step (all tiles)
    # fidelity of the sent sample against q (sums over dims, for pooling across images)
    z_sum: float = 0.0
    z_sq_sum: float = 0.0
    slope_num: float = 0.0  # Σ (x − μ_p)(μ_q − μ_p)
    slope_den: float = 0.0  # Σ (μ_q − μ_p)²
    dims: int = 0


@dataclass
class EncodeResult:
    data: bytes
    steps: list[StepRecord]  # n = 0 (x_K) .. stop
    num_dims: int  # C·H·W of the image
    stop: int  # reverse steps in the file (K = lossless)
    seconds: float
    network_seconds: float
    search_seconds: float

    def to_dict(self) -> dict:
        return {
            "file_bytes": len(self.data),
            "bits_per_dim": 8 * len(self.data) / self.num_dims,
            "stop_step": self.stop,
            "lossless": self.stop == len(self.steps) - 1 and self.steps[-1].timestep == 0,
            "seconds": self.seconds,
            "network_seconds": self.network_seconds,
            "search_seconds": self.search_seconds,
            "steps": [step_dict(s, self.num_dims) for s in self.steps],
        }


def step_dict(s: StepRecord, num_dims: int) -> dict:
    mse = s.sq_err / num_dims
    return {
        "n": s.n,
        "t": s.timestep,
        "file_bytes": s.file_bytes,
        "bits_per_dim": 8 * s.file_bytes / num_dims,
        "stream_bits": s.stream_bits,
        "kl_bits": s.kl_bits,
        "rmse": math.sqrt(mse),
        "psnr": psnr(mse),
        "chunks": s.chunks,
        "candidates": s.candidates,
    }


def psnr(mse: float) -> float:
    return math.inf if mse <= 0 else 10.0 * math.log10(255.0**2 / mse)


@dataclass
class DecodeResult:
    image: np.ndarray  # [C, H, W] uint8: the exact image when complete and lossless, else the reconstruction
    steps_decoded: int  # reverse steps decoded (K: exact image)
    total_steps: int
    complete: bool  # the whole file was present and verified
    lossless: bool
    header: pf.Header
    intermediates: list[np.ndarray] = field(default_factory=list)  # reconstructions after 0..steps_decoded steps
    seconds: float = 0.0


class _Chain:
    """The state both sides share: the prior's reverse steps on a batch of tiles, timed."""

    def __init__(self, prior: Prior, schedule, tiles_shape, chunk_bits: float, max_batch: int, device):
        self.prior, self.schedule, self.max_batch, self.device = prior, schedule, max_batch, device
        self.chunk_bits = chunk_bits
        self.shape = tiles_shape  # [B, C, t, t]
        self.num_tiles = tiles_shape[0]
        self.dims = int(np.prod(tiles_shape[1:]))
        self.var_q = schedule.posterior_variance
        self.c1, self.c2 = schedule.posterior_mean_coefs
        self.seconds = 0.0
        self.log_r = np.full(self.num_tiles, math.log(CALIBRATION_START))
        self.perm_cache: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def reverse(self, x: torch.Tensor, j: int):
        """p(x_{j}|x_{j+1}) for every tile: snapped (mean, std) [B, D] float64 and x̂_0 [B, C, t, t]."""
        t0 = time.perf_counter()
        means, logvars, x0s = [], [], []
        for s in range(0, self.num_tiles, self.max_batch):
            xb = x[s : s + self.max_batch].to(self.device)
            k = torch.full((xb.shape[0],), j, dtype=torch.long, device=self.device)
            rev = self.prior.reverse(xb, k, self.schedule)
            means.append(rev.mean.cpu())
            logvars.append(rev.log_variance.cpu())
            x0s.append(rev.x0_hat.cpu())
        mean = torch.cat(means).flatten(1)
        logvar = torch.cat(logvars).flatten(1)
        if not (torch.isfinite(mean).all() and torch.isfinite(logvar).all()):
            raise ValueError("the prior produced non-finite outputs (is the prior file damaged?)")
        std = torch.from_numpy(snap(torch.exp(0.5 * logvar).numpy())).clamp(min=2.0**-20)
        self.seconds += time.perf_counter() - t0
        return torch.from_numpy(snap(mean.numpy())), std, torch.cat(x0s)

    def plan(self, tile: int, j: int, std_p: torch.Tensor) -> list[tuple[torch.Tensor, float]]:
        """Chunks of tile ``tile`` at step j: [(dims [d] long, predicted KL bits)], from decoder-side data only."""
        var_q = float(self.var_q[j])
        e = (0.5 * torch.log(std_p**2 / var_q)).clamp(min=MIN_EXPECTED_NATS)
        perm = self.perm_cache.get(j)
        if perm is None:
            g = torch.Generator().manual_seed(seed_of(0x9E37, j))
            perm = self.perm_cache[j] = torch.randperm(self.dims, generator=g)
        e_perm = e[perm]
        raw_bits = float(e_perm.sum()) / math.log(2.0)
        r = math.exp(self.log_r[tile])
        n = int(min(max(round(r * raw_bits / self.chunk_bits), 1), self.dims))
        before = torch.cumsum(e_perm, 0) - e_perm
        ids = torch.clamp((before * (n / float(e_perm.sum()))).floor().long(), max=n - 1)
        chunks = []
        for c in range(n):
            mask = ids == c
            if bool(mask.any()):
                chunks.append((perm[mask], r * float(e_perm[mask].sum()) / math.log(2.0)))
        return chunks

    def calibrate(self, tile: int, chunks, bits: int) -> None:
        """Update tile's r from the code lengths of its last step (both sides see the same bits)."""
        raw = sum(pred for _, pred in chunks) / math.exp(self.log_r[tile])
        kl_estimate = max(bits - CHUNK_OVERHEAD_BITS * len(chunks), 0.1)
        observed = math.log(kl_estimate / max(raw, 1e-9))
        self.log_r[tile] = min(max((1 - CALIBRATION_RATE) * self.log_r[tile] + CALIBRATION_RATE * observed, -12.0), 12.0)


def _chunk_seed(tile: int, j: int, c: int) -> int:
    return seed_of(0xD1FF, tile, j, c)


def _free_start(schedule, dims: int) -> bool:
    """KL(q(x_K|x_0) ‖ N(0, I)) ≤ D·(−½ log(1 − ᾱ_K)) for x_0 ∈ [−1, 1]; below FREE_BITS, x_K is drawn from p."""
    abar = float(schedule.alphas_cumprod[-1])
    return dims * (-0.5 * math.log1p(-abar)) / math.log(2.0) < FREE_BITS


def _start(chain: _Chain) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed_of(0x5A17))
    return torch.randn(chain.shape, generator=gen, dtype=torch.float64)


def _pixels_sq_err(x0_hat: torch.Tensor, tiles: np.ndarray, n: int, h: int, w: int) -> float:
    rec = from_tiles(model_to_pixels(x0_hat).numpy(), n, h, w)
    ref = from_tiles(tiles, n, h, w)
    return float(((rec.astype(np.float64) - ref) ** 2).sum())


@dataclass(frozen=True)
class Target:
    """Where a lossy file stops: the first step whose reconstruction reaches ``psnr`` dB, or the last
    step whose file fits in ``max_bytes``. Without either, the file runs to the exact image."""

    psnr: float | None = None
    max_bytes: int | None = None

    def reached(self, rec: StepRecord, num_dims: int) -> bool:
        return self.psnr is not None and psnr(rec.sq_err / num_dims) >= self.psnr

    def exceeded(self, file_bytes: int) -> bool:
        return self.max_bytes is not None and file_bytes > self.max_bytes


def encode(prior: Prior, image, params: ProgressiveParams = ProgressiveParams(), target: Target = Target(),
           progress: bool = False) -> EncodeResult:
    """One image [C, H, W] uint8 → a progressive file (:class:`EncodeResult`); ``target`` stops it early."""
    t_start = time.perf_counter()
    image = _check_image(prior, image)
    if prior.digest is None:
        raise ValueError("the prior has no digest (load it with diffcodec.checkpoint.load_prior)")
    params = params.resolved(prior)
    schedule = prior.schedule(params.steps, params.spacing)
    if not _free_start(schedule, prior.num_dims):
        raise ValueError("this prior's schedule does not end near N(0, I) (KL of x_K above 0.1 bit); not supported")
    c, h, w = image.shape
    tiles = to_tiles(image[None], prior.image_shape[1])
    device = next(prior.parameters(), torch.empty(0)).device
    chain = _Chain(prior, schedule, tiles.shape, params.chunk_bits, params.max_batch, device)
    K, D = schedule.num_steps, c * h * w
    header = pf.Header(prior_digest=prior.digest, steps=K, spacing=_SPACINGS.index(params.spacing),
                       chunk_quarters=round(4 * params.chunk_bits), threads=params.threads,
                       max_batch=params.max_batch, channels=c, height=h, width=w, tile=prior.image_shape[1],
                       stop=K, total_bytes=0)
    x0 = pixels_to_model(torch.from_numpy(tiles), torch.float64).flatten(1)  # [B, D]
    writer = BitWriter()
    records: list[StepRecord] = []
    recons: list[np.ndarray] = []  # reconstructions of the last two states
    stats, kl_total, search_seconds, stop = _StepStats(), 0.0, 0.0, None
    x = _start(chain)  # x_K, drawn from p (free)
    with pinned_threads(params.threads), tqdm(total=K, desc="encode", unit="step", disable=not progress, leave=False) as bar:
        for j in range(K - 1, -1, -1):  # x = x_{j+1}; p(x_j | x_{j+1})
            mean_p, std_p, x0_hat = chain.reverse(x, j)
            n = K - 1 - j
            recons = (recons + [from_tiles(model_to_pixels(x0_hat).numpy(), 1, h, w)[0]])[-2:]
            rec = StepRecord(n=n, timestep=int(schedule.timesteps[j]), file_bytes=0, stream_bits=writer.num_bits,
                             kl_bits=kl_total, sq_err=float(((recons[-1].astype(np.float64) - image) ** 2).sum()))
            stats.store(rec)
            rec.file_bytes = pf.file_bytes(pf.replace(header, stop=n), rec.stream_bits)
            records.append(rec)
            if target.exceeded(rec.file_bytes):
                if n == 0:
                    raise ValueError(f"no file fits in {target.max_bytes} bytes (the smallest is {rec.file_bytes})")
                stop = n - 1
                break
            if target.reached(rec, D):
                stop = n
                break
            if j == 0:
                break
            t0 = time.perf_counter()
            x, stats = _encode_step(chain, writer, j, x0, x.flatten(1), mean_p, std_p, params)
            search_seconds += time.perf_counter() - t0
            kl_total += stats.kl
            bar.update(1)
        if stop is None:  # the lossless end: x_0 under P(x_0|x_1)
            lossless, nll_bits = _encode_pixels(tiles, mean_p, std_p)
            data = pf.pack(header, writer.to_bytes() + lossless, image)
            if not target.exceeded(len(data)):
                stop = K
                records.append(StepRecord(n=K, timestep=0, file_bytes=len(data), stream_bits=writer.num_bits + 8 * len(lossless),
                                          kl_bits=kl_total + nll_bits, sq_err=0.0))
            else:
                stop = K - 1
            bar.update(1)
    if stop < K:
        final = recons[-1] if records[-1].n == stop else recons[-2]
        records = records[: stop + 1]
        body = _bits_prefix(writer.to_bytes(), records[stop].stream_bits)
        data = pf.pack(pf.replace(header, stop=stop), body, final)
        records[stop].file_bytes = len(data)
    return EncodeResult(data=data, steps=records, num_dims=D, stop=stop, seconds=time.perf_counter() - t_start,
                        network_seconds=chain.seconds, search_seconds=search_seconds)


def _bits_prefix(data: bytes, nbits: int) -> bytes:
    """The first ``nbits`` bits of ``data``, zero-padded to whole bytes."""
    out = bytearray(data[: -(-nbits // 8)])
    if nbits % 8:
        out[-1] &= (0xFF << (8 - nbits % 8)) & 0xFF
    return bytes(out)


def _encode_step(chain: "_Chain", writer: BitWriter, j: int, x0, x_flat, mean_p, std_p, params: ProgressiveParams):
    """Send x_j ~ q(x_j|x_{j+1}, x_0) for every tile → (x_j [B, C, t, t] float64, step statistics)."""
    mu_q = chain.c1[j] * x0 + chain.c2[j] * x_flat
    sd_q = math.sqrt(chain.var_q[j])
    new = torch.empty_like(x_flat)
    stats = _StepStats()
    for b in range(chain.num_tiles):
        chunks = chain.plan(b, j, std_p[b])
        start_bits = writer.num_bits
        for ci, (dims, pred) in enumerate(chunks):
            mq, mp, sp = mu_q[b, dims], mean_p[b, dims], std_p[b, dims]
            kl = float(kl_nats_per_dim(mq, sd_q, mp, sp).sum()) / math.log(2.0)
            a, bb = log_weight_coefs(mq, sd_q, mp, sp)
            private = torch.Generator().manual_seed(seed_of(0xE11C, b, j, ci))
            pick = select(a, bb, _chunk_seed(b, j, ci), kl, params.margin, private, params.max_search_bits)
            IndexCode.for_kl(pred).write(writer, pick.index)
            xs = mp + sp * pick.eps.double()
            new[b, dims] = xs
            stats.add(xs, mq, sd_q, mp, kl, pick.searched)
        chain.calibrate(b, chunks, writer.num_bits - start_bits)
        stats.chunks += len(chunks)
    return new.view(chain.shape), stats


@dataclass
class _StepStats:
    kl: float = 0.0
    chunks: int = 0
    candidates: int = 0
    z_sum: float = 0.0
    z_sq_sum: float = 0.0
    slope_num: float = 0.0
    slope_den: float = 0.0
    dims: int = 0

    def add(self, xs, mq, sd_q, mp, kl, searched):
        z = (xs - mq) / sd_q
        dq = mq - mp
        self.kl += kl
        self.candidates += searched
        self.z_sum += float(z.sum())
        self.z_sq_sum += float((z * z).sum())
        self.slope_num += float(((xs - mp) * dq).sum())
        self.slope_den += float((dq * dq).sum())
        self.dims += xs.numel()

    def store(self, rec: StepRecord):
        rec.chunks, rec.candidates = self.chunks, self.candidates
        rec.z_sum, rec.z_sq_sum, rec.slope_num, rec.slope_den, rec.dims = (
            self.z_sum, self.z_sq_sum, self.slope_num, self.slope_den, self.dims)


def _encode_pixels(tiles: np.ndarray, mean_p: torch.Tensor, std_p: torch.Tensor) -> tuple[bytes, float]:
    """x_0 of every tile with the exact discretized decoder → (bytes without trailing zero bytes, ideal bits)."""
    logvar = 2.0 * torch.log(std_p)
    probs = decoder_probs(mean_p.numpy().reshape(-1), logvar.numpy().reshape(-1))
    symbols = tiles.reshape(-1).astype(np.int32)
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(symbols, _CATEGORICAL, probs)
    p = probs[np.arange(len(symbols)), symbols] / probs.sum(axis=1)
    return enc.get_compressed().astype("<u4").tobytes().rstrip(b"\0"), float(-np.log2(p).sum())


def _decode_pixels(data: bytes, mean_p: torch.Tensor, std_p: torch.Tensor, shape) -> np.ndarray:
    logvar = 2.0 * torch.log(std_p)
    probs = decoder_probs(mean_p.numpy().reshape(-1), logvar.numpy().reshape(-1))
    words = np.frombuffer(data + b"\0" * (-len(data) % 4), dtype="<u4").astype(np.uint32)
    if len(words) == 0:
        words = np.zeros(1, dtype=np.uint32)
    dec = constriction.stream.queue.RangeDecoder(words)
    return dec.decode(_CATEGORICAL, probs).astype(np.uint8).reshape(shape)


def _check_image(prior: Prior, image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"expected one image [C, H, W], got shape {list(image.shape)}")
    image = as_pixels(image[None]).numpy()[0]
    c = prior.image_shape[0]
    if image.shape[0] != c:
        kind = {1: "grayscale", 3: "RGB"}
        raise ValueError(f"image is {kind.get(image.shape[0], image.shape[0])} but the prior codes {kind[c]} images")
    if max(image.shape[1:]) >= 2**16:
        raise ValueError("images larger than 65535 pixels on a side are not supported")
    return image


def decode(prior: Prior, data: bytes, steps: int | None = None, keep_intermediates: bool = False,
           progress: bool = False) -> DecodeResult:
    """A progressive file (or any prefix of it) → the image, or the reconstruction after the last complete step.

    ``steps`` stops after that many reverse steps (K = everything). A prefix (a truncated file)
    decodes every complete step; a complete file is verified by its CRC over file and pixels.
    """
    t_start = time.perf_counter()
    header, body, complete = pf.unpack(data)
    if prior.digest is None or not header.matches_prior(prior.digest):
        raise ValueError(
            f"file was made with another prior (digest {header.prior_digest[:8]}…, this prior is "
            f"{(prior.digest or 'unknown')[:8]}…); pass the right one with --prior")
    c, size = prior.image_shape[0], prior.image_shape[1]
    if header.channels != c or header.tile != size or header.spacing >= len(_SPACINGS):
        raise ValueError("progressive file is inconsistent with its prior (corrupted header)")
    schedule = prior.schedule(header.steps, _SPACINGS[header.spacing])
    K = schedule.num_steps
    tiles_shape = (math.ceil(header.height / size) * math.ceil(header.width / size), c, size, size)
    pf.check_work(header, tiles_shape[0])
    device = next(prior.parameters(), torch.empty(0)).device
    chain = _Chain(prior, schedule, tiles_shape, header.chunk_quarters / 4, header.max_batch, device)
    limit = K if steps is None else min(steps, K)
    limit = min(limit, header.stop)
    reader = BitReader(body)
    x = _start(chain)
    recon, intermediates = None, []
    done = 0
    image = None
    with pinned_threads(header.threads), tqdm(total=limit, desc="decode", unit="step", disable=not progress, leave=False) as bar:
        for j in range(K - 1, -1, -1):
            mean_p, std_p, x0_hat = chain.reverse(x, j)
            recon = from_tiles(model_to_pixels(x0_hat).numpy(), 1, header.height, header.width)[0]
            if keep_intermediates:
                intermediates.append(recon)
            done = K - 1 - j
            if done >= limit or j == 0:
                break
            try:
                x = _decode_step(chain, reader, j, mean_p, std_p).view(tiles_shape)
            except OutOfBits:
                break
            bar.update(1)
        lossless = False
        if done == K - 1 and limit == K and header.stop == K and complete:
            start = -(-reader.position // 8)
            pixels = _decode_pixels(body[start:], mean_p, std_p, tiles_shape)
            image = from_tiles(pixels, 1, header.height, header.width)[0]
            done, lossless = K, True
            bar.update(1)
            if keep_intermediates:
                intermediates.append(image)
    final = image if lossless else recon
    verified = False
    if complete and done == header.stop:
        if not pf.verify(data, final):
            raise ValueError("decoding desynchronized (decoded pixels fail the file's checksum); nothing written")
        verified = True
    return DecodeResult(image=final, steps_decoded=done, total_steps=K, complete=verified, lossless=lossless,
                        header=header, intermediates=intermediates, seconds=time.perf_counter() - t_start)


def _decode_step(chain: _Chain, reader: BitReader, j: int, mean_p, std_p) -> torch.Tensor:
    """Read one step of every tile → x_j [B, D] float64. Raises OutOfBits if the stream ends inside it."""
    new = torch.empty(chain.num_tiles, chain.dims, dtype=torch.float64)
    for b in range(chain.num_tiles):
        chunks = chain.plan(b, j, std_p[b])
        start_bits = reader.position
        for ci, (dims, pred) in enumerate(chunks):
            index = IndexCode.for_kl(pred).read(reader)
            eps = candidate(_chunk_seed(b, j, ci), index, len(dims), chain.device).cpu()
            new[b, dims] = mean_p[b, dims] + std_p[b, dims] * eps.double()
        chain.calibrate(b, chunks, reader.position - start_bits)
    return new
