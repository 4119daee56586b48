"""The photo prior on the held-out test photographs (issue #14): lossless, lossy, time and memory.

``python -m bench photos [--prior P] [--quick]`` (P: default the embedded ``photo`` prior) measures,
on the test split of the prepared photo corpus (``python -m diffcodec.photos prepare``):

- **lossless, whole photos**: bytes of PNG (optimize), WebP lossless (method 6) and JPEG XL lossless
  (effort 10) per photo, every file decoded and checked; diffcodec's variational bound of the whole
  photo (the network sees the photo whole; 100 front-spaced steps, exact sum over steps) and of the
  same photo as the tiles ``compress`` chains (about 64 px, just covering the photo:
  coding.lossless.lossless_tile; what tiling costs); the real ``compress`` file of
  each photo alone (header, classic seed and chain: everything); the first photo's file is decoded
  back and checked bit-exact (tests/test_photo_prior.py checks exactness on small images).
  Means over photos are of per-photo bits/dim.
- **lossy, centre crops**: the centre ``CROP``×``CROP`` of every second test photo (5 of the 9,
  ``LOSSY_EVERY``; the progressive coder's search grows with the pixel count: a whole 256×256 photo
  to 41 dB takes ``encode`` 10-12 minutes on this CPU, so whole photos are a stage of their own,
  ``python -m bench photos-whole``);
  JPEG, WebP, JPEG XL and AVIF quality sweeps (bench.classic, one file per crop, decoded) and
  ``encode`` stopped at ``TOP_DB`` dB, whose every prefix is a point (real file bytes of the prefix,
  PSNR of what the decoder shows). Per crop: the bits/dim each codec needs at 30 / 35 / 40 dB
  (interpolated on its own front) and the BD-rate of diffcodec against each classic codec; reported
  as means (rates) and medians (BD-rates) over crops.
- **time and memory** on one test photo (the smallest): ``diffcodec nll`` and ``compress`` of the
  whole photo and ``encode --psnr 35`` of its centre ``ENCODE_CROP``×``ENCODE_CROP`` (a whole photo
  takes the search tens of minutes), each run as its own process (wall time and peak resident memory
  from the kernel), beside the network passes it made, replayed alone (bench.timing.replay_seconds).
  Two torch threads throughout.

Writes ``photos.json`` and ``photos.png`` (the lossy RD curves, mean rate at each PSNR).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffcodec.coding.lossless import CodecParams, compress, decompress, lossless_tile, to_tiles
from diffcodec.coding.progressive import ProgressiveParams, Target, encode
from diffcodec.engines import coding_engine, with_engine
from diffcodec.images import write_image
from diffcodec.photos import load_photos
from diffcodec.terms import compute_terms

from .bdrate import bd_rate
from .classic import LOSSLESS, LOSSY, TARGETS_DB, as_hwc, lossless_bytes, measure, psnr, rate_at_psnr
from .plotting import pyplot
from .provenance import read_json
from .timing import recorded_calls, replay_seconds

CROP, QUICK_CROP = 64, 32
WHOLE = 0  # lossy_part's size for whole photos
TOP_DB = 41.0  # encode stops at the first step at or above this PSNR (the comparisons stop at 40 dB)
LOSSLESS_KEYS = ("png", "webp_lossless", "jxl_lossless_e10")
LOSSY_KEYS = ("jpeg", "webp", "jxl", "avif")
QUICK_PHOTOS = 2
THREADS = 2  # torch threads for the network everywhere (the compress files record it)
ENCODE_CROP = 64  # the timing part's encode runs on this centre crop of the photo
LOSSY_EVERY = 2  # the lossy part takes every second test photo (5 of 9)


def _prior(ctx):
    from diffcodec.checkpoint import load_prior

    return load_prior(ctx.prior_path or "photo").eval()


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    _, h, w = image.shape
    y, x = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(image[:, y : y + size, x : x + size])


def vlb_bits(prior, images: np.ndarray, steps: int, engine) -> float:
    """Σ over ``images`` of the K-step bound in bits (one noise draw per image and step, seed 0)."""
    schedule = prior.schedule(steps, "front")
    terms = compute_terms(with_engine(prior, engine, torch.get_num_threads()), images, schedule,
                          torch.Generator().manual_seed(0), max_batch=8)
    return float(terms.total_nats.sum() / math.log(2))


def classic_lossless_row(image: np.ndarray) -> dict:
    """{codec key: bits/dim} of ``image`` [C, H, W] for the classic lossless codecs installed here."""
    return {k: 8 * lossless_bytes(k, as_hwc(image)) / image.size for k in LOSSLESS_KEYS if LOSSLESS[k][2]()}


def compress_photo(prior, photo, steps: int, engine, check: bool):
    """(file bytes, CodecStats, seconds) of ``compress`` on one photo alone, two threads; ``check``:
    decode it back and raise unless bit-exact."""
    t0 = time.perf_counter()
    blob, stats = compress(prior, photo.image[None], [photo.name], CodecParams(steps=steps, engine=engine, threads=THREADS))
    seconds = time.perf_counter() - t0
    if check and not np.array_equal(decompress(prior, blob)[0][0], photo.image):
        raise RuntimeError(f"{photo.name}: compress/decompress is not exact")
    return blob, stats, seconds


def lossless_part(ctx, prior, photos, steps: int) -> dict:
    engine = coding_engine("auto")
    rows = []
    for p in photos:
        image, dims = p.image, p.image.size
        row = {"photo": p.name, "shape": list(image.shape), **classic_lossless_row(image)}
        t0 = time.perf_counter()
        row["vlb_whole"] = vlb_bits(prior, image[None], steps, engine) / dims
        row["vlb_whole_seconds"] = time.perf_counter() - t0
        tile = lossless_tile(prior, *image.shape[1:])
        row["vlb_tiles"] = vlb_bits(prior, to_tiles(image[None], tile), steps, engine) / dims
        # decoding doubles the time: the first photo is decoded (tests check the rest of exactness)
        blob, stats, row["compress_seconds"] = compress_photo(prior, p, steps, engine, check=p is photos[0])
        if p is photos[0]:
            row["decoded_exact"] = True
        row.update(compress=8 * len(blob) / dims, compress_bytes=len(blob), tiles=stats.num_tiles,
                   classic_tiles=stats.bootstrap_tiles, tile=list(tile), engine=engine.value)
        rows.append(row)
        ctx.log(f"  {p.name} {image.shape[2]}x{image.shape[1]}: " + ", ".join(
            f"{k} {row[k]:.3f}" for k in (*LOSSLESS_KEYS, "vlb_whole", "vlb_tiles", "compress") if k in row))
    keys = [k for k in (*LOSSLESS_KEYS, "vlb_whole", "vlb_tiles", "compress") if all(k in r for r in rows)]
    return {"steps": steps, "engine": engine.value, "photos": rows,
            "mean_bits_per_dim": {k: float(np.mean([r[k] for r in rows])) for k in keys}}


def _encode_curve(prior, crop: np.ndarray, steps: int) -> tuple[list[dict], dict]:
    res = encode(prior, crop, ProgressiveParams(steps=steps), Target(psnr=TOP_DB))
    dims = crop.size
    points = [{"step": s.n, "bits_per_dim": 8 * s.file_bytes / dims, "psnr": psnr(s.sq_err / dims)}
              for s in res.steps if res.in_file(s)]
    return points, {"seconds": res.seconds, "search_seconds": res.search_seconds, "bytes": len(res.data)}


def lossy_part(ctx, prior, photos, steps: int, size: int | None = None, progress=None) -> dict:
    """Rate–distortion on the centre ``size``-px crops (default CROP) of ``photos``, or on the whole
    photos when ``size`` is WHOLE (bench/photos_whole.py). ``progress(part)``, if given, gets the
    result over the photos encoded so far after each but the last (long runs write partial results)."""
    size = size if size is not None else (QUICK_CROP if ctx.quick else CROP)
    crops = [p.image if size == WHOLE else centre_crop(p.image, size) for p in photos]
    fronts: dict[str, list] = {}
    for key in LOSSY_KEYS:
        codec = next(c for c in LOSSY if c.key == key)
        if not codec.available():
            continue
        params = codec.quick_sweep() if ctx.quick else codec.sweep
        per_crop = []
        for c in crops:
            rates, quals = [], []
            for q in params:
                b, m = measure(codec, c[None], q)
                rates.append(8 * b[0] / c.size)
                quals.append(psnr(m[0]) if m[0] > 0 else math.inf)
            per_crop.append((rates, quals))
        fronts[key] = per_crop
    diff, info = [], []
    for i, c in enumerate(crops):
        t0 = time.perf_counter()
        points, meta = _encode_curve(prior, c, steps)
        diff.append(([q["bits_per_dim"] for q in points], [q["psnr"] for q in points]))
        info.append(dict(meta, wall_seconds=time.perf_counter() - t0, photo=photos[i].name))
        what = "whole" if size == WHOLE else "crop"
        ctx.log(f"  encode {photos[i].name} {what}: {meta['bytes']} bytes to {points[-1]['psnr']:.1f} dB in {meta['seconds']:.0f} s")
        if progress is not None and i + 1 < len(crops):
            progress(_lossy_summary(size, photos[: i + 1], {k: v[: i + 1] for k, v in fronts.items()}, diff, info))
    return _lossy_summary(size, photos, fronts, diff, info)


def _lossy_summary(size, photos, fronts: dict, diff: list, info: list) -> dict:
    """lossy_part's result from the classic fronts and diffcodec's curves of ``photos``."""
    fronts = dict(fronts, diffcodec=diff)
    rates = {k: {f"{t:g}": _mean_rate(v, t) for t in TARGETS_DB} for k, v in fronts.items()}
    bd = {}
    for key in LOSSY_KEYS:
        if key in fronts:
            per = [_bd_rate(a, d) for a, d in zip(fronts[key], diff)]
            vals = [v for v in per if v is not None]
            bd[key] = {"median": float(np.median(vals)) if vals else None, "per_crop": per}
    return {"crop": "whole" if size == WHOLE else size, "top_db": TOP_DB, "photos": [p.name for p in photos], "encode": info,
            "bits_per_dim_at_psnr": rates, "bd_rate_vs": bd,
            "curves": {k: [[list(map(float, r)), [float(x) for x in q]] for r, q in v] for k, v in fronts.items()}}


def _bd_rate(anchor: tuple, test: tuple) -> float | None:
    """BD-rate (%) of one crop's diffcodec curve against a classic one; None when they barely overlap."""
    try:
        return bd_rate(anchor, test)
    except ValueError:  # a front of one or two points inside the overlap (a tiny prior, few steps)
        return None


def _mean_rate(per_crop: list, target: float) -> float | None:
    """Mean over crops of the bits/dim each needs at ``target`` dB (None if any crop's front misses it)."""
    vals = [rate_at_psnr(r, q, target) for r, q in per_crop]
    return None if any(v is None for v in vals) else float(np.mean(vals))


def _run_measured(cmd: list[str]) -> dict:
    """Run a command; wall seconds and peak resident memory (MiB) of that process alone."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({status})")
    return {"seconds": time.perf_counter() - t0, "peak_rss_mib": usage.ru_maxrss / 1024, "stdout": out}


def timing_part(ctx, prior, photo, steps: int, only: tuple[str, ...] | None = None) -> dict:
    """nll, compress and encode on one photo, each in its own process, beside its network passes alone."""
    cli = [sys.executable, "-m", "diffcodec_cli.main"]
    prior_arg = ["--prior", ctx.prior_path or "photo"]
    rows = {}
    crop = centre_crop(photo.image, min(ENCODE_CROP, *photo.image.shape[1:]))
    threads = ["--threads", str(THREADS)]
    with tempfile.TemporaryDirectory() as tmp:
        path, crop_path = Path(tmp) / "photo.png", Path(tmp) / "crop.png"
        write_image(path, photo.image)
        write_image(crop_path, crop)
        engine = coding_engine("auto")
        commands = {
            "nll": (cli + ["nll", "--data", str(path), *prior_arg, "--steps", str(steps), "--estimator", "exact", "--json",
                           "--engine", engine.value, "--workers", "1"], None),
            "compress": (cli + ["compress", str(path), "-o", f"{tmp}/p.dcl", *prior_arg, "--steps", str(steps), "--no-vlb",
                                "--json", *threads],
                         lambda: compress(prior, photo.image[None], ["p.png"], CodecParams(steps=steps, engine="float32", threads=THREADS))),
            "encode_crop": (cli + ["encode", str(crop_path), "-o", f"{tmp}/p.dcp", *prior_arg, "--steps", str(steps), "--psnr", "35",
                                   "--json", *threads],
                            lambda: encode(prior, crop, ProgressiveParams(steps=steps, threads=THREADS), Target(psnr=35.0))),
        }
        for name, (cmd, op) in commands.items():
            if only is not None and name not in only:
                continue
            row = _run_measured(cmd)
            record = json.loads(row.pop("stdout"))
            view = with_engine(prior, record.get("engine", "float32"), 1)
            # the calls: nll makes one pass per step at the photo's size; the coders' are recorded on a
            # float32 rerun in this process (the same calls whatever the engine), replayed on the run's engine
            calls = [(1, *photo.image.shape)] * steps if op is None else _calls_of(prior, op)
            row["network_calls"] = len(calls)
            row["floor_seconds"] = replay_seconds(view, calls)
            row["ratio"] = row["seconds"] / row["floor_seconds"]
            row["engine"] = record.get("engine")
            rows[name] = row
            ctx.log(f"  {name}: {row['seconds']:.1f} s, {row['peak_rss_mib']:.0f} MiB, network alone {row['floor_seconds']:.1f} s")
    return {"photo": photo.name, "shape": list(photo.image.shape), "encode_crop": list(crop.shape), "steps": steps,
            "threads": THREADS, "operations": rows}


def _calls_of(prior, op) -> list:
    """The network calls (input shapes) ``op`` makes on ``prior``'s own network."""
    with recorded_calls(prior) as calls:
        op()
    return list(calls)


def photo_prior(ctx, stage: str):
    """(prior, steps) of a photo stage: ``--prior`` or the embedded photo prior, recorded in the
    provenance, which must be an any-size colour prior; the chain's steps capped at its T."""
    prior = ctx.prior = _prior(ctx)
    if not prior.any_size or prior.image_shape[0] != 3:
        raise ValueError(f"bench {stage} needs an any-size colour prior (the embedded 'photo' prior)")
    return prior, min(ctx.steps, prior.config.num_timesteps)


def _setup(ctx, stage: str):
    """(prior, steps, test photos) of a stage that runs on the test photos (--quick: the 2 smallest)."""
    prior, steps = photo_prior(ctx, stage)
    photos = load_photos("test")
    if ctx.quick:
        photos = sorted(photos, key=lambda p: p.image.size)[:QUICK_PHOTOS]
    torch.set_num_threads(THREADS)
    ctx.measured_on = ("photos:test", len(photos))
    ctx.log(f"{stage}: {len(photos)} test photos, prior {prior.digest[:12]}, {steps} steps")
    return prior, steps, photos


def stage(ctx) -> dict:
    prior, steps, photos = _setup(ctx, "photos")
    body = {"prior_digest": prior.digest, "prior_info": prior.info, "data": "photos:test", "steps": steps}
    ctx.log("time and memory, one photo")  # first: on a quiet machine
    body["timing"] = timing_part(ctx, prior, min(photos, key=lambda p: p.image.size), steps)
    ctx.write("photos", body)
    ctx.log("lossless, whole photos")
    body["lossless"] = lossless_part(ctx, prior, photos, steps)
    ctx.write("photos", body)
    ctx.log("lossy, centre crops")
    body["lossy"] = lossy_part(ctx, prior, photos[::LOSSY_EVERY], steps)
    ctx.write("photos", body)
    plot(body, ctx.out / "photos.png")
    return body


def refresh(ctx, part: str) -> dict:
    """Recompute one part ("lossless" or "timing") of an existing photos.json made with the same prior
    and steps, keeping the others; every part records the provenance it was measured under."""
    prior, steps = photo_prior(ctx, f"photos-{part}")
    path = ctx.out / "photos.json"
    body = read_json(path)
    if body is None or body.get("prior_digest") != prior.digest or body.get("steps") != steps:
        raise ValueError(f"{path} is missing or was made with another prior or steps: run `python -m bench photos`")
    previous = body.pop("provenance", None)
    body.pop("stage", None)
    parts = body.setdefault("part_provenance", {})
    for other in ("timing", "lossless", "lossy"):
        parts.setdefault(other, previous)
    photos = load_photos("test")
    torch.set_num_threads(THREADS)
    ctx.measured_on = ("photos:test", len(photos))
    ctx.log(f"photos-{part}: {len(photos)} test photos, prior {prior.digest[:12]}, {steps} steps")
    if part == "lossless":
        body["lossless"] = lossless_part(ctx, prior, photos, steps)
    else:
        body["timing"] = timing_part(ctx, prior, min(photos, key=lambda p: p.image.size), steps)
    parts[part] = ctx.provenance()
    body = ctx.write("photos", body)
    plot(body, ctx.out / "photos.png")
    return body


def stage_lossless(ctx) -> dict:
    return refresh(ctx, "lossless")


def stage_timing(ctx) -> dict:
    return refresh(ctx, "timing")


def plot(body: dict, path) -> None:
    plt = pyplot()
    lossy = body["lossy"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, rates in lossy["bits_per_dim_at_psnr"].items():
        xs = [float(t) for t, v in rates.items() if v is not None]
        ys = [v for v in rates.values() if v is not None]
        ax.plot(ys, xs, "o-", label=key, lw=2.5 if key == "diffcodec" else 1.2)
    ax.set_xlabel("bits/dim (mean over crops)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"lossy: {lossy['crop']}x{lossy['crop']} centre crops of {len(lossy['photos'])} test photos")
    ax.legend()
    ax.grid(alpha=0.3)
    ll = body["lossless"]["mean_bits_per_dim"]
    bx.bar(range(len(ll)), list(ll.values()))
    bx.set_xticks(range(len(ll)), list(ll.keys()), rotation=30, ha="right")
    bx.set_ylabel("bits/dim (mean over whole test photos)")
    bx.set_title("lossless")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


BOUND = "photo_bound"  # results file of stage_bound, one entry per prior


def bound_entry(ctx, prior, photos, steps: int) -> dict:
    """The whole-photo ``steps``-step bound (bits/dim) of every photo under ``prior`` (one noise draw,
    seed 0, the coding engine ``auto`` as ``compress`` runs it); _gauge adds the prior's training record."""
    engine = coding_engine("auto")
    rows, t0 = {}, time.perf_counter()
    for p in photos:
        rows[p.name] = vlb_bits(prior, p.image[None], steps, engine) / p.image.size
        ctx.log(f"  {p.name}: bound {rows[p.name]:.4f} bits/dim")
    return {"engine": engine.value, "seconds": time.perf_counter() - t0,
            "bound": rows, "mean_bound": float(np.mean(list(rows.values())))}




def stage_bound(ctx) -> dict:
    """``python -m bench photos-bound [--prior P]``: the lossless goal's quick gauge. The whole-photo
    bound of the test photos under P (12-15 minutes here), added to ``photo_bound.json``
    (``--quick``: the 2 smallest photos, ``photo_bound_quick.json``) beside
    the entries of priors measured before (keyed by digest), with PNG, WebP lossless and JPEG XL
    lossless on the same photos. A ``compress`` file lands about 1.5-2 % above this bound (its tiles'
    borders and classic seed; ``photos-files`` measures the files themselves)."""
    return _gauge(ctx, "photos-bound", bound_entry, "mean_bound", "provenance")


def stage_files(ctx) -> dict:
    """``python -m bench photos-files [--prior P]``: the lossless goal itself for a prior that need not
    be the embedded one. The real ``compress`` file of each test photo alone (header, classic seed
    and chain; two threads, engine auto, as ``bench photos``), the first photo's file decoded and
    checked bit-exact, added to P's entry in ``photo_bound.json`` (with its bound if measured; about
    15-20 minutes here)."""
    return _gauge(ctx, "photos-files", compress_entry, "mean_files", "files_provenance")


def compress_entry(ctx, prior, photos, steps: int) -> dict:
    """{"files": {photo: bits/dim of its compress file}, "mean_files", "files_seconds", classic tiles per photo}."""
    engine = coding_engine("auto")
    files, classic, t0 = {}, {}, time.perf_counter()
    for p in photos:
        blob, stats, _ = compress_photo(prior, p, steps, engine, check=p is photos[0])
        files[p.name], classic[p.name] = 8 * len(blob) / p.image.size, [stats.bootstrap_tiles, stats.num_tiles]
        ctx.log(f"  {p.name}: compress file {files[p.name]:.4f} bits/dim ({stats.bootstrap_tiles} of {stats.num_tiles} tiles classic)")
    return {"files": files, "mean_files": float(np.mean(list(files.values()))), "files_engine": engine.value,
            "files_seconds": time.perf_counter() - t0, "classic_tiles": classic, "first_file_decoded_exact": True}


def _gauge(ctx, stage: str, measure, mean_key: str, provenance_key: str) -> dict:
    """Add what ``measure(ctx, prior, photos, steps)`` gives for the test photos under --prior (its
    bound, or its compress files) to that prior's entry in photo_bound.json, with its provenance
    under ``provenance_key``; logs the entry's ``mean_key``."""
    prior, steps, photos = _setup(ctx, stage)
    name = f"{BOUND}_quick" if ctx.quick else BOUND  # a quick look never replaces the full record
    body = read_json(ctx.out / f"{name}.json") or {}
    names = sorted(p.name for p in photos)
    if sorted(body.get("classic", {})) != names:  # another photo set (--quick, a new corpus): start afresh
        body = {"classic": {p.name: classic_lossless_row(p.image) for p in photos}, "priors": {}}
    body.pop("stage", None)
    body.pop("provenance", None)
    entry = body["priors"].setdefault(f"{prior.digest}:{steps}", {})
    info = dict(prior.info or {})
    entry.update(prior_digest=prior.digest, step=info.get("step"), heldout_bpd=info.get("heldout_bpd"), steps=steps)
    entry.update(measure(ctx, prior, photos, steps))
    entry[provenance_key] = ctx.provenance()
    body["mean_classic"] = {k: float(np.mean([row[k] for row in body["classic"].values()]))
                            for k in LOSSLESS_KEYS if all(k in row for row in body["classic"].values())}
    ctx.log(f"{mean_key} {entry[mean_key]:.4f} bits/dim; " + ", ".join(f"{k} {v:.4f}" for k, v in body["mean_classic"].items()))
    body = ctx.write(name, body, with_prior=False)
    plot_bound(body, ctx.out / f"{name}.png")
    return body


def plot_bound(body: dict, path) -> None:
    """Mean whole-photo bound per prior against its training step, classic codecs as lines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    entries = sorted((e for e in body["priors"].values() if e.get("step") is not None), key=lambda e: e["step"])
    for key, label in (("mean_bound", "diffcodec bound (whole photo)"), ("mean_files", "diffcodec compress files")):
        measured = [e for e in entries if key in e]
        if measured:
            ax.plot([e["step"] for e in measured], [e[key] for e in measured], "o-", lw=2, label=label)
    for (key, value), style in zip(body["mean_classic"].items(), ("--", "-.", ":")):
        ax.axhline(value, ls=style, color="gray", label=f"{key} {value:.3f}")
    ax.set_xlabel("training step of the photo prior")
    ax.set_ylabel(f"bits/dim, mean over {len(body['classic'])} test photos")
    ax.set_title("lossless: the photo prior's bound and files as it trains")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
