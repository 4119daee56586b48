"""Progressive coding with a diffusion prior (DDPM section 4.3, Algorithms 3 and 4).

The receiver gets x_K, then later latents of the chain, and can show x̂_0(x_k) after every step; the
last segment sends x_0 itself, so the whole file decodes to the exact image. Each latent is an
(approximate) sample of q(x_{k−m}|x_k, x_0) sent against p_θ(x_{k−m}|x_k) by reverse channel coding
(coding.rcc) on randomness both sides regenerate; x_0 goes with the exact discretized decoder
P(x_0|x_1) through a range coder. Unlike bits-back, a prefix of this stream costs about the
cumulative KL, not the latents' entropy.

Stream order (one queue: first written, first read; one arithmetic-coded stream, coding.arith):

    header (coding.progressive_file)
    x_K: drawn from N(0, I) by both sides from a fixed seed (its KL is below 0.1 bit for the
         schedules diffcodec accepts), no bits
    for each visited state x_k, k = K, …, 2 (jumps m from coding.progressive_steps):
        for every tile: its KL level, then for each of its chunks the candidate index (octave +
        raw low bits)                                      → x_{k−m} = μ_p + σ_p ⊙ ε_{i*}
    the arithmetic coder's termination (pending + 2 bits), zero bits to the next byte
    x_0 of every tile under P(x_0|x_1), range coded (constriction's queue coder), trailing zero bytes dropped
    CRC-32 of the file and of the pixels it decodes to

Step framing costs bits, not bytes: everything the decoder needs to split a step into chunks comes
from the level it just read and from the latents it holds (coding.progressive_steps), and the
arithmetic decoder's prefix rule stops before the first symbol a cut file cannot fully determine,
so a file cut at any byte decodes every step whose symbols lie 32 bits before the cut and shows
x̂_0 of the last one. A file stopped by the encoder (``--psnr``/``--bytes``) is terminated right
after its last step and decodes all of it.

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

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..defaults import AUTO_PROGRESSIVE_ENGINE, CODEC_SPACING, CODEC_STEPS, CODING_ENGINES, Engine
from ..engines import coding_engine, coding_view, decoding_engine
from ..diffusion import model_to_pixels, pixels_to_model
from ..prior import Prior
from ..schedule import Spacing
from . import progressive_file as pf
from . import progressive_finish as finishing
from .arith import ArithmeticDecoder, ArithmeticEncoder, OutOfBits, Snapshot
from .lossless import check_images, from_tiles, pinned_threads, tile_shape, to_tiles
from .progressive_records import EncodeResult, StepRecord, StepStats, fidelity_stats, psnr, step_dict  # noqa: F401
from .progressive_steps import LEVEL_MAX, LEVEL_MIN, LEVEL_SPAN, SKIP, Chain, kl_level
from .rcc import candidate, kl_nats_per_dim, log_weight_coefs, read_index, seed_of, select, write_index

# Without a target the encoder walks on until the exact file, ended at three successive states, would be
# more than WALK_ON bytes above its best: past its minimum it rises with noise of a few bytes per state.
# The first 40 test images, every state's exact file computed to x_1: the mean best file is 360.0 bytes;
# this rule ends at 360.4 after 27.6 of 52.6 states; two states (the rule before the residual finish)
# 362.5 after 22.5; 6 bytes over 3 states 360.1 after 32.8.
WALK_ON, WALK_PATIENCE = 3, 3
FREE_BITS = 0.1  # x_K is drawn from p without bits when KL(q(x_K|x_0) ‖ N(0, I)) is provably below this
_SPACINGS = [Spacing.EVEN, Spacing.FRONT]
FINISHES = ("best", "end")


@dataclass(frozen=True)
class ProgressiveParams:
    steps: int = CODEC_STEPS
    spacing: Spacing = CODEC_SPACING
    chunk_bits: float = 10.0  # κ: most KL per chunk (bits); bigger chunks cost fewer bits, exponentially more candidates
    merge_bits: float = 16.0  # noisy steps are merged until a transmission carries about this many bits
    skip_bits: float = 0.0  # a tile-step whose KL is below this is not sent: the decoder draws it from p
    margin: float = 7.0  # candidates searched per chunk: 2^(KL + margin), at most 2^max_search_bits (encoder only)
    max_search_bits: int = 17  # never more than 2^this candidates per chunk (beyond it samples are biased towards p)
    threads: int = 1  # torch threads for the network, recorded in the file
    max_batch: int = 64  # tiles per network call, recorded in the file
    search_threads: int = 2  # threads scoring candidates (encoder only: the file does not depend on it)
    finish: str = "best"  # exact end from the state where x_0 costs least ("best") or from x_1 ("end"); encoder only
    engine: Engine = Engine.FLOAT32  # how the network runs (engines.coding_engine; AUTO: float32), recorded in the file

    def resolved(self, prior: Prior) -> "ProgressiveParams":
        if not 1 <= self.threads <= 255:
            raise ValueError(f"threads must be in 1..255, got {self.threads}")
        if not 1 <= self.max_batch <= 65535:
            raise ValueError(f"max batch must be in 1..65535, got {self.max_batch}")
        if self.chunk_bits * 4 != round(self.chunk_bits * 4) or not 1 <= self.chunk_bits <= 24:
            raise ValueError(f"chunk bits must be a multiple of 1/4 in 1..24, got {self.chunk_bits}")
        if self.merge_bits * 4 != round(self.merge_bits * 4) or not 0 <= self.merge_bits <= 256:
            raise ValueError(f"merge bits must be a multiple of 1/4 in 0..256, got {self.merge_bits}")
        if not 0 <= self.skip_bits <= 64:
            raise ValueError(f"skip bits must be in 0..64, got {self.skip_bits}")
        if not 0 <= self.margin <= 16:
            raise ValueError(f"candidate margin must be in 0..16 bits, got {self.margin}")
        if not 10 <= self.max_search_bits <= 30:
            raise ValueError(f"max search bits must be in 10..30, got {self.max_search_bits}")
        if self.steps < 2:
            raise ValueError(f"progressive coding needs at least 2 steps, got {self.steps}")
        if not 1 <= self.search_threads <= 64:
            raise ValueError(f"search threads must be in 1..64, got {self.search_threads}")
        if self.finish not in FINISHES:
            raise ValueError(f"finish must be one of {', '.join(FINISHES)}, got {self.finish!r}")
        prior.schedule(self.steps, self.spacing)  # validates steps against the prior
        engine = coding_engine(self.engine, next(prior.parameters(), torch.empty(0)).device, AUTO_PROGRESSIVE_ENGINE)
        return ProgressiveParams(self.steps, Spacing(self.spacing), float(self.chunk_bits), float(self.merge_bits),
                                 float(self.skip_bits), float(self.margin), int(self.max_search_bits), int(self.threads),
                                 int(self.max_batch), int(self.search_threads), self.finish, engine)


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
    engine: str = "float32"  # the network's engine, as the file records


@dataclass(frozen=True)
class Target:
    """Where a lossy file stops: the first step whose reconstruction reaches ``psnr`` dB, or the last
    step whose file fits in ``max_bytes``. Without either, the file runs to the exact image."""

    psnr: float | None = None
    max_bytes: int | None = None

    def reached(self, rec: StepRecord, num_dims: int) -> bool:
        return self.psnr is not None and psnr(rec.sq_err / num_dims) >= self.psnr

    @property
    def none(self) -> bool:
        return self.psnr is None and self.max_bytes is None

    def exceeded(self, file_bytes: int) -> bool:
        return self.max_bytes is not None and file_bytes > self.max_bytes


def _free_start(schedule, dims: int) -> bool:
    """KL(q(x_K|x_0) ‖ N(0, I)) ≤ D·(−½ log(1 − ᾱ_K)) for x_0 ∈ [−1, 1]."""
    abar = float(schedule.alphas_cumprod[-1])
    return dims * (-0.5 * math.log1p(-abar)) / math.log(2.0) < FREE_BITS


def _start(shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed_of(0x5A17)), dtype=torch.float64)


def _chunk_seed(tile: int, k: int, c: int) -> int:
    return seed_of(0xD1FF, tile, k, c)


def _recon(x0_hat: torch.Tensor, h: int, w: int) -> np.ndarray:
    return from_tiles(model_to_pixels(x0_hat).numpy(), 1, h, w)[0]


def encode(prior: Prior, image, params: ProgressiveParams = ProgressiveParams(), target: Target = Target(),
           progress: bool = False) -> EncodeResult:
    """One image [C, H, W] uint8 → a progressive file (:class:`EncodeResult`); ``target`` stops it early.

    Without a target the file is exact: the step stream up to the visited state from which x_0 costs
    least (coding.progressive_finish; ``params.finish = "end"`` walks to x_1), then x_0. With one,
    the file stops at the first state that meets it, unless the exact file is smaller (``psnr``) or
    fits (``max_bytes``).
    """
    t_start = time.perf_counter()
    image = _check_image(prior, image)
    if prior.digest is None:
        raise ValueError("the prior has no digest (load it with diffcodec.checkpoint.load_prior)")
    params = params.resolved(prior)
    schedule = prior.schedule(params.steps, params.spacing)
    if not _free_start(schedule, prior.num_dims):
        raise ValueError("this prior's schedule does not end near N(0, I) (KL of x_K above 0.1 bit); not supported")
    c, h, w = image.shape
    tiles = to_tiles(image[None], tile_shape(prior, h, w))
    device = next(prior.parameters(), torch.empty(0)).device
    chain = Chain(coding_view(prior, params.engine, params.threads), schedule, tiles.shape, params.chunk_bits,
                  params.merge_bits, params.max_batch, device)
    K, D = schedule.num_steps, c * h * w
    header = pf.Header(prior_digest=prior.digest, steps=K, spacing=_SPACINGS.index(params.spacing),
                       chunk_quarters=round(4 * params.chunk_bits), merge_quarters=round(4 * params.merge_bits),
                       threads=params.threads, max_batch=params.max_batch, channels=c, height=h, width=w,
                       stop=0, total_bytes=0, cuda=device.type == "cuda", engine=CODING_ENGINES.index(params.engine))
    x0 = pixels_to_model(torch.from_numpy(tiles), torch.float64).flatten(1)  # [B, D]
    coder = ArithmeticEncoder()
    records: list[StepRecord] = []
    snaps: list[Snapshot] = []
    recons: list[np.ndarray] = []  # reconstruction of every visited state
    exact: tuple[int, int, finishing.Finish] | None = None  # (file bytes, record index, finish) of the best exact end
    stats, kl_total, search_seconds, stop, jump, above = StepStats(), 0.0, 0.0, None, None, 0
    x, k = _start(tiles.shape), K
    with pinned_threads(params.threads), tqdm(total=K, desc="encode", unit="step", disable=not progress, leave=False) as bar:
        while True:  # x = x_k
            eps, v, x0_hat = chain.network(x, k)
            recons.append(_recon(x0_hat, h, w))
            snaps.append(coder.snapshot())
            rec = StepRecord(n=K - k, timestep=int(schedule.timesteps[k - 1]), file_bytes=0,
                             stream_bits=snaps[-1].terminated_bits, kl_bits=kl_total,
                             sq_err=float(((recons[-1].astype(np.float64) - image) ** 2).sum()))
            stats.store(rec)
            rec.file_bytes = pf.file_bytes(pf.replace(header, stop=rec.n), rec.stream_bits)
            records.append(rec)
            size = math.inf
            if k == 1 or params.finish == "best":
                fin = finishing.best(tiles, k, float(schedule.alphas_cumprod[k - 1]), x0_hat,
                                     chain.reverse(x, eps, v, 1, 1) if k == 1 else None, v)
                if fin is not None:
                    size = pf.file_bytes(pf.replace(header, stop=rec.n, finish=fin.code),
                                         rec.stream_bits + math.ceil(fin.bits) + finishing.RANGE_CODER_BITS)
                    if exact is None or size < exact[0]:
                        exact = (size, len(records) - 1, fin)
            above = above + 1 if exact is not None and size > exact[0] + WALK_ON else 0
            if target.none and above >= WALK_PATIENCE:
                break  # the exact file only grows from here on (measured: it rises steadily past its minimum)
            if target.exceeded(rec.file_bytes):
                if len(records) == 1:
                    raise ValueError(f"no file fits in {target.max_bytes} bytes (the smallest is {rec.file_bytes})")
                stop = len(records) - 2
                break
            if target.reached(rec, D):
                stop = len(records) - 1
                break
            if k == 1:
                break
            jump = chain.next_jump(k, jump)
            t0 = time.perf_counter()
            x, stats = _encode_step(chain, coder, k, jump, x0, x, eps, v, params)
            search_seconds += time.perf_counter() - t0
            kl_total += stats.kl
            bar.update(jump)
            k -= jump
        bar.update(bar.total - bar.n)
    done = dict(num_dims=D, total_steps=K, network_seconds=chain.network_seconds, search_seconds=search_seconds,
                engine=params.engine.value)

    def beats_lossy(size: int) -> bool:  # no lossy stop, a byte budget (exact is the best picture), or no larger
        return stop is None or target.max_bytes is not None or size <= records[stop].file_bytes

    if exact is not None and beats_lossy(exact[0]):
        _, at, fin = exact
        pixels, pixel_bits = finishing.encode_pixels(tiles, fin)
        stream = coder.terminated(snaps[at])[0]
        data = pf.pack(pf.replace(header, stop=records[at].n, finish=fin.code), stream + pixels, image)
        if not target.exceeded(len(data)) and beats_lossy(len(data)):
            records.append(StepRecord(n=K, timestep=0, file_bytes=len(data), stream_bits=8 * (len(stream) + len(pixels)),
                                      kl_bits=records[at].kl_bits + pixel_bits, sq_err=0.0))
            return EncodeResult(data=data, steps=records, stop=K, exact_from=records[at].n,
                                seconds=time.perf_counter() - t_start, **done)
    stop = len(records) - 1 if stop is None else stop
    data = pf.pack(pf.replace(header, stop=records[stop].n), coder.terminated(snaps[stop])[0], recons[stop])
    records[stop].file_bytes = len(data)
    return EncodeResult(data=data, steps=records[: stop + 1], stop=records[stop].n, seconds=time.perf_counter() - t_start,
                        **done)


def _encode_step(chain: Chain, coder: ArithmeticEncoder, k: int, m: int, x0, x, eps, v, params: ProgressiveParams):
    """Send x_{k−m} ~ q(x_{k−m}|x_k, x_0) for every tile → (x_{k−m} [B, C, t, t] float64, step statistics)."""
    mean_p, std_p = chain.reverse(x, eps, v, k, m)
    c1, c2, sd_q = chain.posterior(k, m)
    mu_q = c1 * x0 + c2 * x.flatten(1)
    new = torch.empty_like(mu_q)
    stats = StepStats()
    for b in range(chain.num_tiles):
        kl_dims = kl_nats_per_dim(mu_q[b], sd_q, mean_p[b], std_p[b]) / math.log(2.0)
        if float(kl_dims.sum()) < params.skip_bits:
            coder.encode_symbol(chain.level_model.table(), SKIP)
            chain.level_model.update(SKIP)
            new[b] = _skipped(mean_p[b], std_p[b], b, k)
            continue
        level = kl_level(float(kl_dims.sum()))
        expected = chain.expected_bits(std_p[b], sd_q)
        symbol = level - chain.predicted_level(b, expected) + LEVEL_SPAN
        coder.encode_symbol(chain.level_model.table(), symbol)
        chain.level_model.update(symbol)
        chain.levels[b], chain.expected[b] = level, expected
        chunks = chain.chunks(b, k, level, std_p[b], sd_q)
        for ci, (dims, kappa) in enumerate(chunks):
            mq, mp, sp = mu_q[b, dims], mean_p[b, dims], std_p[b, dims]
            kl = float(kl_dims[dims].sum())
            a, bb = (t.to(chain.device) for t in log_weight_coefs(mq, sd_q, mp, sp))  # candidates on the chain's device
            pick = select(a, bb, _chunk_seed(b, k, ci), kl, params.margin, seed_of(0xE11C, b, k, ci),
                          params.max_search_bits, params.search_threads)
            write_index(coder, chain.octaves.table(kappa), pick.index)
            chain.octaves.update(kappa, pick.index)
            xs = mp + sp * pick.eps.cpu().double()
            new[b, dims] = xs
            stats.add(xs, mq, sd_q, mp, kl, pick.searched)
        stats.chunks += len(chunks)
    return new.view(chain.shape), stats


def _skipped(mean_p: torch.Tensor, std_p: torch.Tensor, tile: int, k: int) -> torch.Tensor:
    """A step that was not sent: both sides draw it from p with the same seed."""
    eps = torch.randn(mean_p.shape, generator=torch.Generator().manual_seed(seed_of(0x5C1B, tile, k)), dtype=torch.float32)
    return mean_p + std_p * eps.double()


@torch.no_grad()
def _finish_by_sampling(chain: Chain, x: torch.Tensor, k: int, eps, v, h: int, w: int) -> np.ndarray:
    """Ancestral sampling x_k → x_1 with the prior (one nominal step at a time), then x_0 = the decoder's mean."""
    gen = torch.Generator().manual_seed(seed_of(0x5A3B, k))
    while k > 1:
        mean_p, std_p = chain.reverse(x, eps, v, k, 1)
        noise = torch.randn(mean_p.shape, generator=gen, dtype=torch.float64)
        x = (mean_p + std_p * noise).view(chain.shape)
        k -= 1
        eps, v, _ = chain.network(x, k)
    mean_p, _ = chain.reverse(x, eps, v, 1, 1)
    return _recon(mean_p.view(chain.shape), h, w)


def _decode_step(chain: Chain, reader: ArithmeticDecoder, k: int, m: int, x, eps, v) -> torch.Tensor:
    """Read one step of every tile → x_{k−m} [B, C, t, t] float64. Raises OutOfBits if the stream ends inside it."""
    mean_p, std_p = chain.reverse(x, eps, v, k, m)
    _, _, sd_q = chain.posterior(k, m)
    new = torch.empty_like(mean_p)
    levels, expecteds = list(chain.levels), list(chain.expected)
    octaves, level_model = copy.deepcopy(chain.octaves), copy.deepcopy(chain.level_model)
    for b in range(chain.num_tiles):
        symbol = reader.decode_symbol(level_model.table())
        level_model.update(symbol)
        if symbol == SKIP:
            new[b] = _skipped(mean_p[b], std_p[b], b, k)
            continue
        expected = chain.expected_bits(std_p[b], sd_q)
        level = min(max(chain.predicted_level(b, expected) + symbol - LEVEL_SPAN, LEVEL_MIN), LEVEL_MAX)
        levels[b], expecteds[b] = level, expected
        for ci, (dims, kappa) in enumerate(chain.chunks(b, k, level, std_p[b], sd_q)):
            index = read_index(reader, octaves.table(kappa))
            octaves.update(kappa, index)
            eps_c = candidate(_chunk_seed(b, k, ci), index, len(dims))
            new[b, dims] = mean_p[b, dims] + std_p[b, dims] * eps_c.double()
    # only a complete step updates the shared state
    chain.levels, chain.expected, chain.octaves, chain.level_model = levels, expecteds, octaves, level_model
    return new.view(chain.shape)


def _check_image(prior: Prior, image) -> np.ndarray:
    image = np.array(image)  # a writable copy (torch refuses read-only arrays)
    if image.ndim != 3:
        raise ValueError(f"expected one image [C, H, W], got shape {list(image.shape)}")
    return check_images(prior, image[None])[0]


def decode(prior: Prior, data: bytes, steps: int | None = None, keep_intermediates: bool = False,
           recon: str = "mean", progress: bool = False, engine: Engine | str | None = None) -> DecodeResult:
    """A progressive file (or any prefix of it) → the image, or a reconstruction from the last complete step.

    ``steps`` stops after that many nominal reverse steps (K = everything). A prefix (a truncated
    file) decodes every complete step; a complete file is verified by its CRC over file and pixels.
    ``recon``: "mean" shows x̂_0 of the last decoded latent (the best PSNR); "sample" finishes the
    chain from it with the prior's own ancestral sampling (seeded; sharper, lower PSNR). The exact
    image is returned whenever the file's lossless end was decoded. The network runs through the
    engine the file records; ``engine``, when given and not auto, must be that one (engines.decoding_engine).
    """
    if recon not in ("mean", "sample"):
        raise ValueError(f"recon must be mean or sample, got {recon!r}")
    t_start = time.perf_counter()
    header, body, complete = pf.unpack(data)
    if prior.digest is None or not header.matches_prior(prior.digest):
        raise ValueError(f"file was made with another prior (digest {header.prior_digest}…, this prior is "
                         f"{(prior.digest or 'unknown')[:8]}…); pass the right one with --prior")
    c = prior.image_shape[0]
    if header.channels != c or header.steps > prior.config.num_timesteps:
        raise ValueError("progressive file is inconsistent with its prior (corrupted header)")
    device = next(prior.parameters(), torch.empty(0)).device
    if header.cuda != (device.type == "cuda"):
        made, here = ("CUDA", "CPU") if header.cuda else ("CPU", "CUDA")
        raise ValueError(f"file was encoded on {made} and can only be decoded there (this run uses {here}; "
                         f"pass --device {'cuda' if header.cuda else 'cpu'})")
    file_engine = decoding_engine(CODING_ENGINES[header.engine], device, engine)
    schedule = prior.schedule(header.steps, _SPACINGS[header.spacing])
    K = schedule.num_steps
    a, b = tile_shape(prior, header.height, header.width)
    tiles_shape = (math.ceil(header.height / a) * math.ceil(header.width / b), c, a, b)
    pf.check_work(header, tiles_shape[0])
    chain = Chain(coding_view(prior, file_engine, header.threads), schedule, tiles_shape, header.chunk_quarters / 4,
                  header.merge_quarters / 4, header.max_batch, device)
    limit = min(K if steps is None else steps, header.stop)
    reader = ArithmeticDecoder(body, complete=complete)
    x, k, jump = _start(tiles_shape), K, None
    intermediates, image, lossless = [], None, False
    with pinned_threads(header.threads), tqdm(total=limit, desc="decode", unit="step", disable=not progress, leave=False) as bar:
        while True:
            eps, v, x0_hat = chain.network(x, k)
            shown, done = _recon(x0_hat, header.height, header.width), K - k
            if keep_intermediates:
                intermediates.append((done, shown))
            if k == 1:
                break
            jump = chain.next_jump(k, jump)
            if done + jump > limit:
                break
            try:
                x = _decode_step(chain, reader, k, jump, x, eps, v)
            except OutOfBits:
                break
            k -= jump
            bar.update(jump)
        if header.finish and complete and done == header.stop and (steps is None or steps >= K):
            pixels = finishing.decode_pixels(body[-(-reader.end_bits() // 8):], header.finish, k,
                                             float(schedule.alphas_cumprod[k - 1]), x0_hat, tiles_shape,
                                             chain.reverse(x, eps, v, 1, 1) if k == 1 else None, v,
                                             oriented=header.version >= 5)
            image, done, lossless = from_tiles(pixels, 1, header.height, header.width)[0], K, True
            if keep_intermediates:
                intermediates.append((K, image))
            bar.update(1)
    final = image if lossless else shown
    verified = complete and (lossless or (done == header.stop and not header.finish))
    if complete and not verified and (steps is None or steps >= K):  # the whole file is here, its stream did not lead to its end
        raise ValueError(f"progressive file is corrupted (its step stream ends after {done} of {header.stop} steps, "
                         f"{'then the exact pixels' if header.finish else 'lossy'}); nothing written")
    if verified and not pf.verify(data, final):
        raise ValueError("decoding desynchronized (decoded pixels fail the file's checksum); nothing written")
    if recon == "sample" and not lossless:
        with pinned_threads(header.threads):
            final = _finish_by_sampling(chain, x, k, eps, v, header.height, header.width)
    return DecodeResult(image=final, steps_decoded=done, total_steps=K, complete=verified, lossless=lossless,
                        header=header, intermediates=intermediates, seconds=time.perf_counter() - t_start,
                        engine=file_engine.value)
