"""The progressive codec (``diffcodec encode``) on real images: rate against the ideal, fidelity, time.

For each of the first N images (default 100; ``--quick`` 8) at the codecs' steps:

- one lossless file with the default parameters; from its step records, the file a user gets by
  stopping after nominal step n (``encode --bytes/--psnr``: header, stream terminated there, CRC)
  for every n = 0..K, with the PSNR and RMSE of what ``decode`` shows (x̂_0 of the last latent sent,
  rounded to pixels). Merged steps mean an image visits fewer than K states; at a step it skipped,
  the point is the last state visited before it (what ``decode --step n`` shows);
- the ideal at the same steps on the same images (terms.compute_terms: cumulative KL with true
  samples of q, and the MSE of x̂_0 from them);
- the sent samples against q, per step and pooled (slope of (x − μ_p) on (μ_q − μ_p) and the
  variance of z = (x − μ_q)/σ_q, in units of σ_q);
- time: encode and decode seconds beside the network passes they made, replayed alone
  (bench.timing.replay_seconds) in the same run (``TIMED`` images; ``python -m bench timing`` measures
  the same more carefully, in interleaved rounds);
- a trade-off table of chunk size κ and candidate margin on ``TRADEOFF`` images.

Writes ``progressive.json`` (the rd/lossless stages read it, schema in bench/rd.py),
``progressive.png`` (real vs ideal RD, and real/ideal rate per step) and
``progressive_strip.npz`` (image ``--strip-index`` decoded from growing prefixes, for bench/strip.py).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch

from diffcodec.coding.lossless import pinned_threads
from diffcodec.coding.progressive import ProgressiveParams, decode, encode
from diffcodec.coding.progressive_records import fidelity_stats, psnr
from diffcodec.schedule import Spacing
from diffcodec.terms import compute_terms

from .ideal import psnr_from_mse
from .plotting import pyplot
from .timing import replay_seconds

NUM, QUICK_NUM = 100, 8
TIMED, QUICK_TIMED = 20, 2
TRADEOFF, QUICK_TRADEOFF = 12, 2
TRADEOFF_GRID = [(8.0, 6.5), (9.0, 6.0), (10.0, 4.5), (10.0, 5.25), (10.0, 6.0), (10.0, 7.0), (12.0, 6.5)]
RATE_CHECK_BITS = 100.0  # the rate target applies where the cumulative KL exceeds this


def _params(ctx, **kw) -> ProgressiveParams:
    return ProgressiveParams(steps=ctx.chain_steps, spacing=Spacing(ctx.spacing), **kw)


def _per_step(result, K: int, dims: int) -> list[dict]:
    """Points for n = 0..K from an encode result's visited states."""
    by_n = {r.n: r for r in result.steps}
    points, last = [], None
    for n in range(K + 1):
        last = by_n.get(n, last)
        mse = last.sq_err / dims
        points.append({"step": n, "bytes": last.file_bytes, "bits_per_dim": 8 * last.file_bytes / dims,
                       "stream_bits": last.stream_bits, "kl_bits": last.kl_bits, "rmse": math.sqrt(mse),
                       "psnr": None if mse == 0 else psnr(mse), "visited": n in by_n})
    return points


def _ideal(ctx, images: np.ndarray, schedule) -> tuple[np.ndarray, np.ndarray]:
    """[N, K+1] cumulative KL bits and MSE after n = 0..K steps, true samples of q (same images, same steps)."""
    with pinned_threads(1):
        terms = compute_terms(ctx.prior, images, schedule, torch.Generator().manual_seed(0))
    step = (terms.step_nats / math.log(2)).numpy()  # [N, K], column k−1 = term of step k (0: decoder)
    prior = (terms.prior_nats / math.log(2)).numpy()
    mse = terms.x0_mse.numpy()
    N, K = step.shape
    cum = np.zeros((N, K + 1))
    err = np.zeros((N, K + 1))
    for n in range(K + 1):
        cum[:, n] = prior + step[:, K - n :].sum(axis=1)  # x_{K−n} sent: columns K−n .. K−1
        err[:, n] = mse[:, K - n - 1] if n < K else 0.0
    return cum, err


def _tradeoff(ctx, images) -> list[dict]:
    """Chunk size κ and margin against rate, fidelity and time: the whole chain to x_1 (as --psnr files use
    it) for stream/KL and fidelity, and the default lossless file for its size and encode time."""
    rows = []
    for kappa, margin in TRADEOFF_GRID:
        kl, stream, recs, size, secs, net = 0.0, 0.0, [], 0, 0.0, 0.0
        for image in images:
            w = encode(ctx.prior, image, _params(ctx, chunk_bits=kappa, margin=margin, finish="end"))
            kl += w.steps[-2].kl_bits
            stream += w.steps[-2].stream_bits
            recs += w.steps
            r = encode(ctx.prior, image, _params(ctx, chunk_bits=kappa, margin=margin))
            size, secs, net = size + len(r.data), secs + r.seconds, net + r.network_seconds
        fid = fidelity_stats(recs)
        dims = int(images[0].size)
        rows.append({"chunk_bits": kappa, "margin": margin, "stream_over_kl": stream / kl, "slope": fid["fidelity_slope"],
                     "z_var": fid["fidelity_z_var"], "lossless_bits_per_dim": 8 * size / (dims * len(images)),
                     "encode_seconds_per_image": secs / len(images), "encode_over_network": secs / net})
        ctx.log(f"  tradeoff κ={kappa:g} margin={margin:g}: stream/KL {rows[-1]['stream_over_kl']:.3f}, "
                f"slope {rows[-1]['slope']:.3f}, lossless {rows[-1]['lossless_bits_per_dim']:.3f} bits/dim, "
                f"{secs / len(images):.2f} s ({secs / net:.2f}× its network time)")
    return rows


def stage(ctx) -> dict:
    num = min(ctx.num, QUICK_NUM if ctx.quick else NUM)
    images = ctx.images[:num]
    params = _params(ctx)
    schedule = ctx.prior.schedule(params.steps, params.spacing)
    K, dims = schedule.num_steps, int(images[0].size)
    per_image, all_records, timing = [], [], []
    timed = QUICK_TIMED if ctx.quick else TIMED
    walk = dataclasses.replace(params, finish="end")
    for i, image in enumerate(images):
        r = encode(ctx.prior, image, params)  # what `diffcodec encode` writes: exact from the cheapest state
        w = encode(ctx.prior, image, walk)  # the whole chain to x_1: every lossy file --psnr/--bytes can stop at
        all_records += w.steps
        per_image.append({"index": i, "points": _per_step(w, K, dims), "lossless_bytes": len(r.data),
                          "exact_from": r.exact_from, "lossless_bytes_from_x1": len(w.data),
                          "visited": len(w.steps), **w.fidelity()})
        if i < timed:
            t0 = time.perf_counter()
            d = decode(ctx.prior, r.data)
            dec_s = time.perf_counter() - t0
            if not np.array_equal(d.image, image):
                raise RuntimeError(f"image {i} did not decode exactly")
            with pinned_threads(params.threads):  # the network passes the encoder made (not after x_0), alone
                floor = replay_seconds(ctx.prior, [1] * sum(1 for s in r.steps if s.timestep > 0))
            timing.append({"encode_s": r.seconds, "decode_s": dec_s, "network_floor_s": floor,
                           "encode_network_s": r.network_seconds, "search_s": r.search_seconds,
                           "passes": sum(1 for s in r.steps if s.timestep > 0)})
        if i % 10 == 0:
            ctx.log(f"  image {i}: {len(r.data)} bytes, {8 * len(r.data) / dims:.3f} bits/dim, {r.seconds:.1f} s")
    ideal_cum, ideal_mse = _ideal(ctx, images, schedule)
    summary = _summarize(per_image, ideal_cum, ideal_mse, all_records, timing, K, dims)
    ctx.log("  trade-off table")
    summary["tradeoff"] = _tradeoff(ctx, images[: QUICK_TRADEOFF if ctx.quick else TRADEOFF])
    body = ctx.write("progressive", {"label": "diffcodec encode", "prior_digest": ctx.prior.digest, "data": ctx.data,
                                     "num_images": num, "num_dims": dims, "steps": K, "spacing": ctx.spacing,
                                     "params": {k: (v.value if hasattr(v, "value") else v) for k, v in vars(params).items()},
                                     **summary, "images": per_image})
    _plot(ctx, body)
    _strip(ctx, params)
    return body


def _summarize(per_image, ideal_cum, ideal_mse, records, timing, K, dims) -> dict:
    real_bits = np.array([[p["bytes"] * 8 for p in im["points"]] for im in per_image], dtype=np.float64)  # [N, K+1]
    stream = np.array([[p["stream_bits"] for p in im["points"]] for im in per_image], dtype=np.float64)
    chain_kl = np.array([[p["kl_bits"] for p in im["points"]] for im in per_image], dtype=np.float64)
    mse = np.array([[p["rmse"] ** 2 for p in im["points"]] for im in per_image], dtype=np.float64)
    ideal = ideal_cum.mean(0)
    steps = []
    for n in range(K + 1):
        steps.append({"step": n, "real_bits": real_bits[:, n].mean(), "real_stream_bits": stream[:, n].mean(),
                      "chain_kl_bits": chain_kl[:, n].mean(), "ideal_kl_bits": ideal[n],
                      "real_bits_per_dim": real_bits[:, n].mean() / dims, "ideal_bits_per_dim": ideal[n] / dims,
                      "real_psnr_mean": _mean_psnr(mse[:, n]), "ideal_psnr_mean": _mean_psnr(ideal_mse[:, n]),
                      "real_rmse": math.sqrt(mse[:, n].mean()), "ideal_rmse": math.sqrt(ideal_mse[:, n].mean())})
    checked = [s for s in steps[:-1] if s["ideal_kl_bits"] > RATE_CHECK_BITS]
    worst_stream = max(s["real_stream_bits"] / s["ideal_kl_bits"] for s in checked)
    worst_file = max(s["real_bits"] / s["ideal_kl_bits"] for s in checked)
    exact = np.array([8.0 * im["lossless_bytes"] for im in per_image])
    lossless = exact / ideal_cum[:, K]
    fid = fidelity_stats(records)
    out = {
        "per_step": steps,
        "lossless_bits_per_dim": exact.mean() / dims,
        "lossless_from_x1_bits_per_dim": real_bits[:, K].mean() / dims,
        "exact_from_step_mean": float(np.mean([im["exact_from"] for im in per_image])),
        "vlb_bits_per_dim": ideal_cum[:, K].mean() / dims,
        "lossless_over_vlb": exact.mean() / ideal_cum[:, K].mean(),
        "lossless_over_vlb_per_image_max": float(lossless.max()),
        "lossless_over_vlb_note": "the default files (exact from the cheapest state); per_step's last point is the "
                                  "file that walks to x_1 (--finish end)",
        "worst_stream_over_ideal_kl": worst_stream,
        "worst_file_over_ideal_kl": worst_file,
        "rate_check_note": f"max over steps with ideal cumulative KL > {RATE_CHECK_BITS:g} bits (means over images); "
                           "stream = the step stream terminated there, file = + header and CRC",
        "fidelity": fid,
        "fidelity_per_step": _fidelity_by_timestep(records),
        "bits_per_dim_at_psnr": {str(db): _rate_at_psnr(steps, db) for db in (30, 35, 40)},
    }
    if timing:
        enc = sum(t["encode_s"] for t in timing)
        dec = sum(t["decode_s"] for t in timing)
        floor = sum(t["network_floor_s"] for t in timing)
        out["timing"] = {"images": len(timing), "encode_s_per_image": enc / len(timing), "decode_s_per_image": dec / len(timing),
                         "network_floor_s_per_image": floor / len(timing), "encode_over_floor": enc / floor,
                         "decode_over_floor": dec / floor,
                         "search_share_of_encode": sum(t["search_s"] for t in timing) / enc,
                         "passes_per_image": sum(t["passes"] for t in timing) / len(timing), "per_image": timing}
    return out


def _mean_psnr(mse: np.ndarray) -> float | None:
    if (mse <= 0).any():
        return None
    return float(np.mean(psnr_from_mse(mse)))


def _rate_at_psnr(steps, db) -> dict:
    """Bits/dim where the mean-PSNR curve first reaches ``db`` (linear in bits/dim between steps), real and ideal."""
    out = {}
    for kind in ("real", "ideal"):
        prev = None
        for s in steps:
            q, r = s[f"{kind}_psnr_mean"], s[f"{kind}_bits_per_dim"] if kind == "real" else s["ideal_bits_per_dim"]
            if q is None:
                break
            if q >= db:
                out[kind] = r if prev is None else prev[1] + (db - prev[0]) / (q - prev[0]) * (r - prev[1])
                break
            prev = (q, r)
        out.setdefault(kind, None)
    return out


def _fidelity_by_timestep(records) -> list[dict]:
    groups: dict[int, list] = {}
    for r in records:
        if r.dims:
            groups.setdefault(r.timestep, []).append(r)
    return [{"t": t, "samples": len(g), **fidelity_stats(g)} for t, g in sorted(groups.items(), reverse=True)]


def _plot(ctx, body) -> None:
    plt = pyplot()
    if plt is None:
        return
    steps = body["per_step"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    pts = [(s["real_bits_per_dim"], s["real_psnr_mean"]) for s in steps if s["real_psnr_mean"] is not None]
    ideal = [(s["ideal_bits_per_dim"], s["ideal_psnr_mean"]) for s in steps if s["ideal_psnr_mean"] is not None]
    ax[0].plot(*zip(*ideal), label="ideal: cumulative KL, x̂_0 from true samples of q", color="C0")
    ax[0].plot(*zip(*pts), label="diffcodec encode: real files (header + CRC)", color="C3")
    ax[0].set_xlabel("bits/dim")
    ax[0].set_ylabel("mean per-image PSNR (dB)")
    ax[0].set_title(f"{body['num_images']} Fashion-MNIST test images, {body['steps']} steps")
    ax[0].grid(alpha=0.3)
    ax[0].legend(fontsize=8)
    n = [s["step"] for s in steps[:-1] if s["ideal_kl_bits"] > 1]
    ax[1].plot(n, [steps[i]["real_stream_bits"] / steps[i]["ideal_kl_bits"] for i in n], label="stream / ideal KL")
    ax[1].plot(n, [steps[i]["real_bits"] / steps[i]["ideal_kl_bits"] for i in n], label="file (header, CRC) / ideal KL")
    ax[1].plot(n, [steps[i]["real_stream_bits"] / max(steps[i]["chain_kl_bits"], 1e-9) for i in n],
               label="stream / KL of the chain actually coded", ls="--")
    ax[1].axhline(1.25, color="k", lw=0.8, ls=":")
    ax[1].set_ylim(0.8, 3.0)
    ax[1].set_xlabel("reverse steps decoded")
    ax[1].set_ylabel("real / ideal")
    ax[1].grid(alpha=0.3)
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ctx.png("progressive"), dpi=120)
    plt.close(fig)


def _strip(ctx, params) -> None:
    """Image ``strip_index`` decoded from the prefixes a file stopped at five steps would be, then the exact
    file ``diffcodec encode`` writes with these parameters (its default end: the cheapest state)."""
    from diffcodec.coding.progressive import Target

    i = ctx.strip_index
    image = ctx.images[i]
    full = encode(ctx.prior, image, dataclasses.replace(params, finish="end"))
    visited = [r for r in full.steps if r.n > 0]
    picks = [visited[int(round(j))] for j in np.linspace(0, len(visited) - 1, 6)]
    sizes, decoded = [], []
    for rec in picks:
        if rec.n == params.steps:
            data = encode(ctx.prior, image, params).data
        else:
            data = encode(ctx.prior, image, params, Target(max_bytes=rec.file_bytes)).data
        sizes.append(len(data))
        decoded.append(decode(ctx.prior, data).image)
    np.savez(ctx.out / "progressive_strip.npz", index=np.int64(i), bytes=np.array(sizes, np.int64),
             decoded=np.stack(decoded).astype(np.uint8), prior_digest=np.str_(ctx.prior.digest))
    ctx.log(f"wrote {ctx.out / 'progressive_strip.npz'}")
