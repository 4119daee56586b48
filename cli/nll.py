"""`diffcodec nll`: test-set bits/dim of a prior, with the per-step terms behind it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import click

from diffcodec.defaults import (CODEC_SPACING, DEFAULT_BATCH, DEFAULT_PAIRS_PER_CALL, DEFAULT_SAMPLES,
                                MC_SAVING, Estimator)
from diffcodec.schedule import Spacing

from .common import device_option, emit_json, engine_option, json_option, one_line_errors, open_prior, prior_option, steps_option

if TYPE_CHECKING:
    from diffcodec.likelihood import Likelihood

TABLE_ROWS = 16


@click.command()
@prior_option
@click.option("--data", "data_spec", required=True, help="fashion-mnist:test|train, a folder of PNGs, an image, or .npy/.npz.")
@steps_option(None, "Respace the chain to K steps (default: the prior's full schedule).")
@click.option(
    "--spacing",
    type=click.Choice([s.value for s in Spacing]),
    default=CODEC_SPACING.value,
    show_default=True,
    help="With --steps: even strides, or every one of the first K/2 steps and the rest strided.",
)
@click.option(
    "--estimator",
    type=click.Choice([e.value for e in Estimator]),
    default=Estimator.AUTO.value,
    show_default=True,
    help=f"exact: every step; mc: stratified importance sampling of --samples steps per image (unbiased); "
    f"auto: mc when it needs under 1/{MC_SAVING} of exact's network calls (K > {MC_SAVING}·(S + 1)), else exact.",
)
@click.option("--samples", type=click.IntRange(min=1), default=DEFAULT_SAMPLES, show_default=True,
              help="Steps sampled per image by the mc estimator (S).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N images.")
@click.option("--batch", type=click.IntRange(min=1), default=DEFAULT_BATCH, show_default=True, help="Images per batch.")
@click.option("--pairs", type=click.IntRange(min=1), default=DEFAULT_PAIRS_PER_CALL, show_default=True,
              help="(image, step) pairs per network call, counted in images of the prior's size (larger images of an any-size prior: proportionally fewer).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Image groups evaluated in parallel on CPU. Default: torch's thread count.")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option
@engine_option("the network runs", "(README, Engines: the fastest measured engine whose bits/dim change stays "
               "under 0.2 %; onnxruntime on a CPU without bf16 units); float32: the reference, exactly what compress and encode compute.")
@json_option
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write terms per step and the rate–distortion curve (PNG).")
@one_line_errors
def nll(prior_path, data_spec, steps, spacing, estimator, samples, limit, batch, pairs, workers, seed, device, engine,
        as_json, plot):
    """Bits/dim of the variational bound on a data set, per step (DDPM Table 4) and in total."""
    from diffcodec.data import check_fits, load_images
    from diffcodec.files import check_output_file
    from diffcodec.engines import resolve_engine
    from diffcodec.likelihood import evaluate_nll, evaluations_per_image, plot_likelihood, resolve_estimator

    if plot:
        check_output_file(plot)
    if prior_path is None:  # the input picks the embedded prior
        data = load_images(data_spec).subset(limit)
        prior, dev = open_prior(None, device, channels=data.shape[0], quiet=as_json)
    else:
        prior, dev = open_prior(prior_path, device)
        data = load_images(data_spec).subset(limit)
    engine_used = resolve_engine(engine, dev)
    check_fits(data, data_spec, prior.image_shape[0], None if prior.any_size else prior.image_shape[1:])
    schedule = prior.schedule(steps, spacing)
    used = resolve_estimator(estimator, schedule.num_steps, samples)
    evals = len(data) * evaluations_per_image(used, schedule.num_steps, samples)
    click.echo(f"nll: {len(data):,} images, {schedule.num_steps} steps, {describe(used, samples, estimator)}: "
               f"{evals:,} network evaluations, engine {engine_used.value}", err=True)
    result = evaluate_nll(
        prior, data.images, schedule, estimator=used, samples=samples, batch=batch, pairs_per_call=pairs,
        workers=workers, seed=seed, progress=True, engine=engine_used,
    )
    if plot:
        plot_likelihood(result, plot)
    if as_json:
        emit_json({"data": data_spec, "spacing": spacing if schedule.num_steps < schedule.T else None,
                   "estimator_requested": estimator, "engine_requested": engine, **result.to_dict()})
        return
    print_summary(result, data_spec, schedule.T, estimator)
    if plot:
        click.echo(f"wrote {plot}")


def describe(used: Estimator, samples: int, requested: str) -> str:
    """What the estimator computes, in words, and why when AUTO chose it."""
    how = "exact sum over every step" if used is Estimator.EXACT else f"Monte Carlo over steps, {samples} per image"
    if Estimator(requested) is Estimator.AUTO:
        other = "--estimator exact for every step" if used is Estimator.MC else "--estimator mc to sample steps"
        how += f" (auto; {other})"
    return how


def print_summary(r: Likelihood, data_spec: str, T: int, requested: str = Estimator.AUTO.value) -> None:
    import numpy as np

    lo, hi = r.total_bpd_ci95
    spread = "" if math.isnan(r.total_bpd_stderr) else f" ± {r.total_bpd_stderr:.4f} (95% CI {lo:.4f}–{hi:.4f})"
    click.echo(f"prior     {r.prior_digest or '(unsaved)'}")
    click.echo(f"data      {data_spec}: {r.num_images} images, {r.num_steps} of T = {T} steps")
    click.echo(f"estimator {describe(r.estimator, r.samples, requested)}")
    click.echo(f"engine    {r.engine.value}")
    click.echo(f"total     {r.total_bpd:.4f} bits/dim{spread}")
    if r.estimator is Estimator.MC and not math.isnan(r.mc_stderr_bpd):
        click.echo(f"          of which step sampling ± {r.mc_stderr_bpd:.4f} (conservative)")
    click.echo(f"  L_T     {r.prior_bpd:.3e}")
    click.echo(f"  Σ L_t-1 {r.kl_bpd:.4f}   (t ≥ 2)")
    click.echo(f"  L_0     {r.decoder_bpd:.4f}   (decoder)")
    click.echo(f"time      {r.seconds:.1f} s, {r.images_per_second:.2f} images/s")
    rows = table_rows(r.num_steps)
    click.echo("")
    click.echo(f"{'t':>6} {'term bpd':>11} {'rate bpd':>11} {'RMSE':>8}")
    rate = r.cum_rate_bpd
    for k in rows:
        rmse = "" if np.isnan(r.rmse[k]) else f"{r.rmse[k]:.3f}"
        click.echo(f"{int(r.timesteps[k]):>6} {r.term_bpd[k]:>11.6f} {rate[k]:>11.6f} {rmse:>8}")
    if len(rows) < r.num_steps:
        click.echo(f"({len(rows)} of {r.num_steps} steps shown; --json lists every step)")


def table_rows(K: int) -> list[int]:
    """Step indices to print, noisiest first: all when few, else geometric in t (bits sit at small t)."""
    import numpy as np

    if K <= TABLE_ROWS:
        return list(range(K - 1, -1, -1))
    picks = np.unique(np.round(np.geomspace(1, K, TABLE_ROWS)).astype(int) - 1)
    return sorted(picks.tolist(), reverse=True)
