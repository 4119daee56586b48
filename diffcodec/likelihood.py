"""Test-set bits/dim of a prior: the variational bound over a dataset, and where its bits go.

For images x_0 and a K-step schedule with original timesteps S_1 < … < S_K, the bound is

    VLB(x_0) = L_T + Σ_{k=1}^{K} term_k,   term_1 = L_0 (decoder),  term_k = L_{k−1} (KL) for k ≥ 2,

all produced by :mod:`diffcodec.terms`. Two estimators of the per-image VLB:

- ``EXACT``: every term, one noise draw each (like the reference ``calc_bpd_loop``), through
  :func:`~diffcodec.terms.compute_terms`; K network evaluations per image.
- ``MC``: L_T and the decoder term exactly, the K − 1 KL terms by stratified importance sampling:
  with a proposal q over steps 2..K (half uniform in log-SNR, half uniform in k) and S samples per
  image, stratum s draws u_s ~ U[s/S, (s+1)/S), takes the step k_s = Q⁻¹(u_s) of q's inverse CDF, and
  the estimate is (1/S) Σ_s L_{k_s}/q(k_s). Each term is unbiased (E over u and the noise); so is
  the sum. S + 1 network evaluations per image. Its Monte Carlo variance, given the images, is
  estimated by collapsing strata in pairs (a triple when S is odd; conservative, i.e. an
  over-estimate, because stratum means differ); with S = 1 it cannot be estimated.
- ``AUTO``: MC when K > 4·(S + 1), where it saves more than 4× the network calls, else EXACT.

Per-step figures (``term_bpd``) are means over images. For MC they are Horvitz–Thompson estimates:
each evaluated pair contributes L_k/(S·q(k)) to its step, every other step contributes 0, so each
step's figure is unbiased for the mean term and the figures sum exactly to the total. ``rmse`` of a
step is √(mean squared error of x̂_0(x_k)) over every pixel of every evaluation at that step, 0–255
scale (NaN at steps MC never visited).

Throughput and reproducibility: images go in groups of ``batch``; every network call carries about
``pairs_per_call`` (image, step) pairs, several steps of several images, under inference mode. On
CPU, groups run concurrently on ``workers`` threads with one intra-op thread each: small networks
scale better across cores this way than by splitting every operation over all cores, and a
background job (a training run) stalls no thread barriers. Group g draws its noise from its own
generator, :func:`group_generator` (seed, g), so the same images, prior, schedule, seed, ``batch``
and ``pairs_per_call`` give the same figures whatever the number of workers (batch composition
changes float32 network round-off, hence the last two).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .defaults import DEFAULT_BATCH, DEFAULT_PAIRS_PER_CALL, DEFAULT_SAMPLES, MC_SAVING, Estimator
from .diffusion import as_pixels, pixels_to_model, prior_kl
from .engines import Engine, resolve_engine, with_engine
from .prior import Prior
from .schedule import Schedule
from .terms import compute_terms, pair_terms
from .units import nats_to_bpd

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass
class Likelihood:
    """The bound over a dataset. Nats are converted once, by units.nats_to_bpd, before they land here."""

    estimator: Estimator
    timesteps: np.ndarray  # [K] int64, original timesteps S_1 < … < S_K
    image_bpd: np.ndarray  # [N] bits/dim, each image's VLB (estimate)
    prior_bpd: float  # mean L_T
    term_bpd: np.ndarray  # [K] bits/dim, mean term per step; index 0 = decoder L_0
    term_bpd_stderr: np.ndarray  # [K] bits/dim, standard error over images
    rmse: np.ndarray  # [K] x̂_0(x_k) RMSE on the 0–255 scale; NaN where never evaluated
    evaluations: np.ndarray  # [K] int64, (image, step) pairs evaluated per step
    mc_stderr_bpd: float  # MC standard error given these images (0 for EXACT, NaN if S = 1)
    num_dims: int
    samples: int | None  # S for MC
    seed: int
    prior_digest: str | None
    seconds: float
    engine: Engine = Engine.FLOAT32  # how the network ran (engines.Engine; never AUTO)

    @property
    def num_images(self) -> int:
        return len(self.image_bpd)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def total_bpd(self) -> float:
        return float(self.image_bpd.mean())

    @property
    def total_bpd_stderr(self) -> float:
        """Standard error over images (NaN for one image); for MC it includes the sampling noise."""
        n = self.num_images
        return float(self.image_bpd.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan

    @property
    def total_bpd_ci95(self) -> tuple[float, float]:
        half = Z95 * self.total_bpd_stderr
        return (self.total_bpd - half, self.total_bpd + half)

    @property
    def decoder_bpd(self) -> float:
        return float(self.term_bpd[0])

    @property
    def kl_bpd(self) -> float:
        """Σ_{t≥2} L_{t−1}: the KL terms of all steps but the decoder."""
        return float(self.term_bpd[1:].sum())

    @property
    def cum_rate_bpd(self) -> np.ndarray:
        """[K] rate(S_k) = L_T + Σ_{j>k} term_j: bits/dim to transmit x_k (DDPM Table 4).

        The step's own term (which transmits x_{k−1}) is not included, so at k = 1 the rate is the
        total minus the decoder term, and rate + decoder = total.
        """
        after = np.concatenate([np.cumsum(self.term_bpd[::-1])[::-1][1:], [0.0]])
        return self.prior_bpd + after

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict:
        """The JSON record (``steps`` from the noisiest step down); NaN becomes None."""
        lo, hi = self.total_bpd_ci95
        rate = self.cum_rate_bpd
        steps = [
            {
                "t": int(self.timesteps[k]),
                "term_bpd": _num(self.term_bpd[k]),
                "term_bpd_stderr": _num(self.term_bpd_stderr[k]),
                "cum_rate_bpd": _num(rate[k]),
                "rmse": _num(self.rmse[k]),
                "evaluations": int(self.evaluations[k]),
            }
            for k in range(self.num_steps - 1, -1, -1)
        ]
        return {
            "total_bpd": _num(self.total_bpd),
            "total_bpd_stderr": _num(self.total_bpd_stderr),
            "total_bpd_ci95": [_num(lo), _num(hi)],
            "prior_bpd": _num(self.prior_bpd),
            "decoder_bpd": _num(self.decoder_bpd),
            "kl_bpd": _num(self.kl_bpd),
            "mc_stderr_bpd": _num(self.mc_stderr_bpd),
            "num_images": self.num_images,
            "num_dims": self.num_dims,
            "num_steps": self.num_steps,
            "estimator": self.estimator.value,
            "samples": self.samples,
            "seed": self.seed,
            "prior_digest": self.prior_digest,
            "seconds": _num(self.seconds),
            "engine": self.engine.value,
            "images_per_second": _num(self.images_per_second),
            "steps": steps,
        }


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


@dataclass
class _Batch:
    """One group's contribution, all nats and on the prior's device."""

    image_nats: torch.Tensor  # [B] each image's VLB (estimate)
    prior_nats: torch.Tensor  # [B] L_T
    step_sum: torch.Tensor  # [K] Σ over images of each step's contribution (exact term or HT estimate)
    step_sumsq: torch.Tensor  # [K] Σ over images of its square
    sq_err: torch.Tensor  # [K] Σ squared x̂_0 error over evaluated pairs and dims, 0–255 scale
    evaluations: torch.Tensor  # [K] pairs evaluated per step
    mc_var: torch.Tensor  # [B] nats², MC variance estimate per image (0 for EXACT)

    @classmethod
    def of(cls, prior_nats, step_nats, sq_err, evaluations, mc_var) -> "_Batch":
        """From the per-image contributions step_nats [B, K]."""
        total = prior_nats + step_nats.sum(1)
        return cls(total, prior_nats, step_nats.sum(0), step_nats.pow(2).sum(0), sq_err, evaluations, mc_var)


def mc_proposal(schedule: Schedule) -> np.ndarray:
    """[K − 1] float64 q over steps 2..K: ½·(Δ log SNR normalized) + ½·uniform.

    In continuous time the diffusion loss is ½∫ SNR′(t)·‖x_0 − x̂_0‖² dt (VDM, Kingma et al. 2021);
    with a denoiser error near D/SNR a step's KL term is about ½·D·Δlog SNR, so q follows log-SNR. The
    uniform half bounds the weights 1/q by 2(K − 1) wherever that guess is wrong.
    """
    abar = np.clip(schedule.alphas_cumprod, 1e-12, 1.0 - 1e-12)  # ᾱ_K = 0 when β_K = 1 (short linear T)
    log_snr = np.log(abar) - np.log1p(-abar)
    dlog = np.abs(np.diff(log_snr))  # step k ≥ 2 moves log SNR from k−1 to k
    if not dlog.sum() > 0:
        return np.full(len(dlog), 1.0 / len(dlog))
    return 0.5 * dlog / dlog.sum() + 0.5 / len(dlog)


def _exact_batch(prior: Prior, pixels: torch.Tensor, schedule: Schedule, gen: torch.Generator, pairs: int) -> _Batch:
    terms = compute_terms(prior, pixels, schedule, gen, max_batch=pairs)
    B, K = terms.step_nats.shape
    sq = terms.x0_mse.sum(0) * terms.num_dims
    return _Batch.of(
        terms.prior_nats, terms.step_nats, sq, torch.full((K,), B, device=sq.device), torch.zeros_like(terms.prior_nats)
    )


def stratified_draws(q: torch.Tensor, rows: int, S: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """S stratified draws per row from q ([n] f64): ([rows, S] indices, [rows, S] weights 1/(S·q)).

    Draw s inverts q's CDF at u_s ~ U[s/S, (s+1)/S), so index i is drawn S·q_i times in expectation
    and Σ_s weight_s·f(i_s) is unbiased for Σ_i f(i).
    """
    cdf = torch.cumsum(q, 0)
    u = (torch.arange(S, dtype=torch.float64) + torch.rand(rows, S, generator=gen, dtype=torch.float64)) / max(S, 1)
    idx = torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=len(q) - 1)
    return idx, 1.0 / (max(S, 1) * q[idx])


def _mc_batch(prior: Prior, pixels: torch.Tensor, schedule: Schedule, gen: torch.Generator, pairs: int, samples: int) -> _Batch:
    device = pixels.device
    x0 = pixels_to_model(pixels, torch.float64)
    B, K, S = x0.shape[0], schedule.num_steps, samples
    if K == 1:  # only the decoder: nothing to sample
        S = 0
    q = torch.as_tensor(mc_proposal(schedule) if K > 1 else np.ones(1), dtype=torch.float64)
    idx, w = stratified_draws(q, B, S, gen)  # [B, S] into steps 2..K
    steps = torch.cat([torch.zeros(B, 1, dtype=torch.long), idx + 1], dim=1)  # [B, S+1] 0-based, col 0 = decoder
    weights = torch.cat([torch.ones(B, 1, dtype=torch.float64), w], dim=1)
    steps, weights = steps.to(device), weights.to(device)

    flat_k, flat_img = steps.flatten(), torch.arange(B, device=device).repeat_interleave(S + 1)
    nats = torch.empty(len(flat_k), dtype=torch.float64, device=device)
    sq = torch.empty_like(nats)
    for start in range(0, len(flat_k), pairs):
        sl = slice(start, start + pairs)
        xs = x0[flat_img[sl]]
        noise = torch.randn(xs.shape, generator=gen, dtype=torch.float64).to(device)
        out = pair_terms(prior, xs, flat_k[sl], noise, schedule)
        nats[sl], sq[sl] = out.nats, out.x0_sq_err

    contrib = nats.view(B, S + 1) * weights  # HT contributions, nats
    step_nats = torch.zeros(B, K, dtype=torch.float64, device=device)
    step_nats.scatter_add_(1, steps, contrib)
    sq_err = torch.zeros(K, dtype=torch.float64, device=device).index_add_(0, flat_k, sq)
    evaluations = torch.bincount(flat_k, minlength=K)
    prior_nats = prior_kl(x0, float(schedule.alphas_cumprod[-1])).sum(dim=(1, 2, 3))
    return _Batch.of(prior_nats, step_nats, sq_err, evaluations, _collapsed_strata_var(contrib[:, 1:]))


def _collapsed_strata_var(contrib: torch.Tensor) -> torch.Tensor:
    """[B, S] per-stratum contributions y_s/S → [B] conservative estimate of Var(Σ_s y_s/S).

    Strata are grouped in pairs (the last three together when S is odd); a group g of m strata adds
    m/(m − 1)·Σ_{s∈g}(c_s − c̄_g)², whose expectation is Σ Var(c_s) plus the spread of the stratum
    means, never less. NaN for S = 1, 0 for S = 0.
    """
    B, S = contrib.shape
    if S == 0:
        return torch.zeros(B, dtype=contrib.dtype, device=contrib.device)
    if S == 1:
        return torch.full((B,), math.nan, dtype=contrib.dtype, device=contrib.device)
    bounds = list(range(0, S + 1, 2)) if S % 2 == 0 else list(range(0, S - 2, 2)) + [S]
    var = torch.zeros(B, dtype=contrib.dtype, device=contrib.device)
    for a, b in zip(bounds[:-1], bounds[1:]):
        g = contrib[:, a:b]
        m = b - a
        var += m / (m - 1) * (g - g.mean(1, keepdim=True)).pow(2).sum(1)
    return var


def group_generator(seed: int, group: int) -> torch.Generator:
    """The CPU generator of image group ``group`` (0, 1, …): independent streams from one seed."""
    state = np.random.SeedSequence([seed, group]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@contextlib.contextmanager
def _inference(prior: Prior, single_threaded: bool):
    """Eval mode, and one intra-op thread if asked; the prior's mode and the thread count are restored."""
    was_training, threads = prior.training, torch.get_num_threads()
    prior.eval()
    try:
        if single_threaded:
            torch.set_num_threads(1)
        yield
    finally:
        torch.set_num_threads(threads)
        prior.train(was_training)


def resolve_estimator(estimator: Estimator | str, num_steps: int, samples: int) -> Estimator:
    """AUTO → MC when it needs fewer than 1/MC_SAVING of EXACT's network calls (K > MC_SAVING·(S + 1)),
    else EXACT; EXACT and MC are returned as they are. At S = 16 chains of more than 68 steps use MC."""
    try:
        estimator = Estimator(estimator)
    except ValueError:
        raise ValueError(f"unknown estimator {estimator!r} (expected {', '.join(e.value for e in Estimator)})") from None
    if estimator is Estimator.AUTO:
        return Estimator.MC if num_steps > MC_SAVING * (samples + 1) else Estimator.EXACT
    return estimator


def evaluations_per_image(estimator: Estimator, num_steps: int, samples: int) -> int:
    """Network evaluations per image: K for EXACT, S + 1 for MC (the decoder and S sampled KL steps)."""
    if estimator is Estimator.EXACT or num_steps == 1:
        return num_steps
    return samples + 1


def evaluate_nll(
    prior: Prior,
    images,
    schedule: Schedule | None = None,
    *,
    estimator: Estimator | str = Estimator.EXACT,
    samples: int = DEFAULT_SAMPLES,
    batch: int = DEFAULT_BATCH,
    pairs_per_call: int = DEFAULT_PAIRS_PER_CALL,
    workers: int | None = None,
    seed: int = 0,
    progress: bool = False,
    engine: Engine | str = Engine.FLOAT32,
) -> Likelihood:
    """The VLB of ``images`` ([N, C, H, W] integer pixels 0..255, array or tensor) under ``prior``.

    ``estimator`` is EXACT, MC or AUTO (the cheaper of the two, :func:`resolve_estimator`); the result
    records the one used. ``samples`` is S for the MC estimator (ignored by EXACT). ``workers`` defaults to
    ``torch.get_num_threads()`` on CPU and is 1 on CUDA (see the module docstring). Noise comes from
    CPU generators, so figures do not depend on the device's RNG. ``engine`` runs the network through
    :mod:`diffcodec.engines` (AUTO: the measured default for the device; the default FLOAT32 is the
    reference the coders use); the result records it. Raises ValueError on bad arguments
    or images that do not match the prior.
    """
    schedule = schedule if schedule is not None else prior.base_schedule
    estimator = resolve_estimator(estimator, schedule.num_steps, samples)
    if schedule.T != prior.config.num_timesteps:
        raise ValueError(f"schedule has T = {schedule.T}, the prior was trained with T = {prior.config.num_timesteps}")
    if estimator is Estimator.MC and samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    if batch < 1 or pairs_per_call < 1 or (workers is not None and workers < 1):
        raise ValueError(f"batch, pairs per call and workers must be >= 1, got {batch}, {pairs_per_call}, {workers}")
    pixels = as_pixels(images, prior.input_shape)
    if len(pixels) == 0:
        raise ValueError("no images to evaluate")
    device = next(prior.parameters(), torch.empty(0)).device
    cpu = device.type == "cpu"
    workers = (workers or torch.get_num_threads()) if cpu else 1
    # an any-size prior's images may be far larger than its training size: pairs_per_call counts images
    # of that size, so a network call holds about as many pixels whatever the image (32 pairs of a
    # 256×256 photo at once took 8.9 GB); the exact estimator's figures do not depend on the grouping
    pairs_per_call = max(1, pairs_per_call * prior.num_dims // max(pixels[0].numel(), prior.num_dims))
    engine = resolve_engine(engine, device)
    prior = with_engine(prior, engine, cache=True)

    def run(group: int) -> _Batch:
        chunk = pixels[group * batch : (group + 1) * batch].to(device)
        gen = group_generator(seed, group)
        with torch.inference_mode():
            if estimator is Estimator.EXACT:
                return _exact_batch(prior, chunk, schedule, gen, pairs_per_call)
            return _mc_batch(prior, chunk, schedule, gen, pairs_per_call, samples)

    start_time = time.perf_counter()
    evals = len(pixels) * evaluations_per_image(estimator, schedule.num_steps, samples)
    with _inference(prior, single_threaded=cpu), tqdm(total=evals, desc=f"nll {estimator.value}", unit="img-step",
                                                      disable=not progress) as bar:
        parts = _run_groups(prior, run, math.ceil(len(pixels) / batch), workers, bar)
    result = _summarize(parts, prior.digest, pixels[0].numel(), schedule, estimator, samples, seed, time.perf_counter() - start_time)
    result.engine = engine
    return result


class _Cancelled(Exception):
    pass


def _run_groups(prior: Prior, run, num_groups: int, workers: int, bar) -> list[_Batch]:
    """run(0..num_groups−1) on a thread pool, results in group order.

    A forward pre-hook on the network advances ``bar`` by the rows of every call (one row per
    image-step), so its rate and ETA are live from the first call. If the caller is interrupted
    (Ctrl-C) or a group fails, the same hook stops every other group at its next network call, so
    the pool winds down within one call instead of one group.
    """
    cancel = threading.Event()
    lock = threading.Lock()

    def stop_if_cancelled(module, args):
        if cancel.is_set():
            raise _Cancelled
        with lock:
            bar.update(len(args[0]))

    hook = prior.net.register_forward_pre_hook(stop_if_cancelled)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="nll")
    parts = []
    try:
        for part in pool.map(run, range(num_groups)):
            parts.append(part)
    except BaseException:
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        hook.remove()
    return parts


def _summarize(parts, digest: str | None, D: int, schedule, estimator, samples, seed, seconds) -> Likelihood:
    image_nats = torch.cat([p.image_nats for p in parts]).cpu()
    n = len(image_nats)
    step_sum, step_sumsq, sq_err, evaluations = (sum(getattr(p, f).cpu() for p in parts) for f in ("step_sum", "step_sumsq", "sq_err", "evaluations"))
    mean = step_sum / n
    term_stderr = ((step_sumsq - n * mean**2).clamp(min=0) / (n - 1) / n).sqrt() if n > 1 else torch.full_like(mean, math.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        rmse = np.sqrt(sq_err.numpy() / (evaluations.numpy() * D))
    mc_var = torch.cat([p.mc_var for p in parts]).cpu()
    mc_stderr = 0.0 if estimator is Estimator.EXACT else float(nats_to_bpd(mc_var.sum().sqrt(), D) / n)
    return Likelihood(
        estimator=estimator,
        timesteps=np.asarray(schedule.timesteps, dtype=np.int64),
        image_bpd=nats_to_bpd(image_nats, D).numpy(),
        prior_bpd=float(nats_to_bpd(torch.cat([p.prior_nats for p in parts]).mean().cpu(), D)),
        term_bpd=nats_to_bpd(mean, D).numpy(),
        term_bpd_stderr=nats_to_bpd(term_stderr, D).numpy(),
        rmse=rmse,
        evaluations=evaluations.to(torch.int64).numpy(),
        mc_stderr_bpd=mc_stderr,
        num_dims=D,
        samples=samples if estimator is Estimator.MC else None,
        seed=seed,
        prior_digest=digest,
        seconds=seconds,
    )


def plot_likelihood(result: Likelihood, path, title: str | None = None) -> None:
    """Two panels to ``path`` (PNG/SVG/PDF by suffix): the term per step against t, and the
    rate–distortion curve (cumulative rate vs x̂_0 RMSE, DDPM Figure 5). Needs matplotlib (the
    ``bench`` extra); raises ValueError naming the fix if it is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plots need matplotlib: pip install 'diffcodec[bench]'") from None
    t, term = result.timesteps, result.term_bpd
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    shown = term > 0
    ax1.plot(t[shown], term[shown], ".-" if result.num_steps <= 100 else "-", lw=1, ms=3)
    ax1.set(xlabel="timestep t", ylabel=r"term $L_{t-1}$ (bits/dim)", xscale="log", yscale="log", title="bits per step")
    ax1.annotate(f"decoder $L_0$ = {result.decoder_bpd:.3f} at t = 1", (0.35, 0.9), xycoords="axes fraction")
    seen = ~np.isnan(result.rmse)
    ax2.plot(result.cum_rate_bpd[seen], result.rmse[seen], ".-" if result.num_steps <= 100 else "-", lw=1, ms=3)
    ax2.set(xlabel=r"rate $L_T + \sum_{s>t} L_{s-1}$ (bits/dim)", ylabel=r"RMSE of $\hat{x}_0$ (0–255)", title="rate–distortion")
    fig.suptitle(title or f"{result.estimator.value}: {result.total_bpd:.4f} bits/dim over {result.num_images} images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
