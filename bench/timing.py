"""Timing: each operation beside the network passes alone that it needs (its floor), in one run.

On the first N images (default 10; ``--quick`` 3), torch pinned to one thread, every round measures:

- ``encode`` / ``decode`` (coding.progressive, default ProgressiveParams at the codecs' steps), per
  image; floor = the network calls the operation made (recorded by a forward pre-hook on the
  network: batch 1, one per visited state but the last), replayed alone through ``prior.network``
  on float64 inputs of the image's shape, as the coder passes them. The channel-simulation share of encode is
  ``search_seconds / seconds`` of its result;
- ``compress`` / ``decompress`` (coding.lossless, CodecParams at the codecs' steps) of the N images
  as one set (names ``img-000.png`` …); floor = their recorded calls (batches that grow with the
  stack, plus compress's bootstrap trials) replayed alone in the same way, and beside it the
  network time inside the operation (``CodecStats.network_seconds``: network and its float64 head);
- ``nll`` (likelihood.evaluate_nll, exact, one worker, the first ``NLL_IMAGES`` images) in
  image-steps per second, beside the network alone at nll's pairs per call for at least as long
  (``bench.nll_throughput.network_ceiling``).

The coders run once per coding engine (float32, and onnxruntime when installed: ``operations_by_engine``);
the calls are recorded on, and the floors replay, that engine's network (engines.coding_view).
``operations`` takes each operation from the engine its ``--engine auto`` picks here (``engines``:
float32 for encode/decode, ONNX Runtime for compress/decompress when it is installed).

Each operation and its floor run back to back (the floor after it in the first of ``ROUNDS`` = 3
rounds, before it in the second, and so on), so that a busy machine slows both alike; the 1-minute
load average is recorded with every measurement. Headline: the best round of each side (timeit's rule: slower rounds are other
processes' doing), per image for encode and decode; ratio = operation seconds / floor seconds (for
nll: network-alone rate / nll rate, the same thing per image-step).

Writes ``timing.json`` and ``timing.png`` (seconds per image, each operation beside its floor).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter

import numpy as np
import torch

from diffcodec.coding.lossless import CodecParams, compress, decompress, pinned_threads
from diffcodec.coding.progressive import ProgressiveParams, decode, encode
from diffcodec.defaults import AUTO_PROGRESSIVE_ENGINE, CODING_ENGINES, DEFAULT_PAIRS_PER_CALL, Engine
from diffcodec.engines import coding_engine, coding_view, onnxruntime_available
from diffcodec.likelihood import evaluate_nll
from diffcodec.schedule import Spacing

from .nll_throughput import network_ceiling
from .plotting import pyplot

NUM, QUICK_NUM = 10, 3
NLL_IMAGES, QUICK_NLL_IMAGES = 8, 3
ROUNDS = 3
THREADS = 1
MIN_CEILING_SECONDS = 0.5  # the network-alone nll measurement runs at least this long
OPERATIONS = ("encode", "decode", "compress", "decompress", "nll")


@contextlib.contextmanager
def recorded_calls(prior):
    """A list that receives the batch size (rows) of every forward pass of ``prior.net`` in the block
    (for an any-size prior the whole input shape [n, C, H, W], as a tuple)."""
    calls: list = []
    shape = (lambda x: tuple(x.shape)) if prior.any_size else (lambda x: int(x.shape[0]))
    hook = prior.net.register_forward_pre_hook(lambda module, args: calls.append(shape(args[0])))
    try:
        yield calls
    finally:
        hook.remove()


def replay_seconds(prior, calls: list) -> float:
    """Seconds for network passes at the batch sizes (or shapes) ``calls``, alone: ``prior.network``
    on float64 inputs [n, C, H, W] at a fixed timestep (the cost does not depend on it), after a warm-up pass."""
    gen = torch.Generator().manual_seed(0)
    x = {n: torch.randn(n if isinstance(n, tuple) else (n, *prior.image_shape), generator=gen, dtype=torch.float64)
         for n in set(calls)}
    t = {n: torch.full((x[n].shape[0],), float(prior.config.num_timesteps // 2)) for n in x}
    with torch.no_grad():
        for n in x:
            prior.network(x[n], t[n])
        t0 = time.perf_counter()
        for n in calls:
            prior.network(x[n], t[n])
        return time.perf_counter() - t0


class Rounds:
    """Measurements of operations beside their floors, round after round.

    :meth:`run` times ``op()`` with its network calls recorded, and replays those calls alone (the
    floor) right after it, or right before it in odd rounds (with the calls recorded in an earlier
    round: the operations are deterministic, which is checked).
    """

    def __init__(self):
        self.round = 0
        self.calls: dict[str, list[int]] = {}
        self.rows: dict[str, list[list[dict]]] = {}  # name → per round → per item

    def run(self, name: str, key: str, op, prior) -> tuple[object, dict]:
        """``prior``: the network ``op`` runs (its engine's view), hooked and replayed."""
        known = self.calls.get(key)
        floor_s = replay_seconds(prior, known) if known is not None and self.round % 2 else None
        with recorded_calls(prior) as calls:
            t0 = time.perf_counter()
            result = op()
            seconds = time.perf_counter() - t0
        if known is not None and known != calls:
            raise RuntimeError(f"{key}: the network calls differ between rounds")
        self.calls[key] = list(calls)
        if floor_s is None:
            floor_s = replay_seconds(prior, calls)
        row = {"seconds": seconds, "floor_s": floor_s, "network_calls": len(calls), "loadavg_1min": _load()}
        self.add(name, row)
        return result, row

    def add(self, name: str, row: dict) -> None:
        per_round = self.rows.setdefault(name, [])
        while len(per_round) <= self.round:
            per_round.append([])
        per_round[self.round].append(row)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _progressive(rounds: Rounds, prior, images: np.ndarray, params: ProgressiveParams, files: dict) -> None:
    """encode and decode of every image, each beside its floor."""
    net = coding_view(prior, params.engine, params.threads)
    for i, image in enumerate(images):
        enc, row = rounds.run("encode", f"encode-{i}", lambda: encode(prior, image, params), net)
        row.update(search_s=enc.search_seconds, encode_result_s=enc.seconds, in_run_network_s=enc.network_seconds,
                   step_records=len(enc.steps), file_bytes=len(enc.data))
        if files.setdefault(i, enc.data) != enc.data:
            raise RuntimeError(f"image {i}: encode gave different files in two rounds")
        dec, _ = rounds.run("decode", f"decode-{i}", lambda: decode(prior, enc.data), net)
        if not np.array_equal(dec.image, image):
            raise RuntimeError(f"image {i} did not decode exactly")


def _lossless(rounds: Rounds, prior, images: np.ndarray, params: CodecParams) -> None:
    """compress and decompress of the images as one set, each beside its floor."""
    names = [f"img-{i:03d}.png" for i in range(len(images))]
    net = coding_view(prior, params.engine, params.threads)
    (blob, stats), row = rounds.run("compress", "compress", lambda: compress(prior, images, names, params), net)
    row.update(in_run_network_s=stats.network_seconds, file_bits=stats.file_bits,
               batch_sizes=_histogram(rounds.calls["compress"]))
    (out, _, stats), row = rounds.run("decompress", "decompress", lambda: decompress(prior, blob), net)
    row.update(in_run_network_s=stats.network_seconds, batch_sizes=_histogram(rounds.calls["decompress"]))
    if not np.array_equal(out, images):
        raise RuntimeError("decompress did not return the images exactly")


def _histogram(calls: list[int]) -> dict[str, int]:
    """Network calls per batch size, {"batch size": calls}."""
    return {str(n): c for n, c in sorted(Counter(calls).items())}


def _nll(rounds: Rounds, prior, images: np.ndarray, schedule) -> None:
    """evaluate_nll (exact) and the network alone for at least as long, in image-steps per second."""
    def network_alone(seconds: float) -> float:
        t0 = time.perf_counter()
        done = network_ceiling(prior, schedule, DEFAULT_PAIRS_PER_CALL, 1, t0 + max(seconds, MIN_CEILING_SECONDS))
        return done / (time.perf_counter() - t0)

    last = rounds.rows.get("nll")
    ceiling = network_alone(last[-1][0]["seconds"]) if last and rounds.round % 2 else None
    res = evaluate_nll(prior, images, schedule, estimator="exact", workers=1, seed=0)
    rate = res.num_images * res.num_steps / res.seconds
    if ceiling is None:
        ceiling = network_alone(res.seconds)
    rounds.add("nll", {"seconds": res.seconds, "image_steps": res.num_images * res.num_steps, "image_steps_per_s": rate,
                       "network_alone_image_steps_per_s": ceiling, "total_bpd": res.total_bpd, "loadavg_1min": _load()})


def measure(ctx, images: np.ndarray, nll_images: np.ndarray, engine: Engine, nll: bool = True) -> Rounds:
    """encode, decode, compress and decompress through ``engine``, and nll (float32) when ``nll``."""
    prior = ctx.prior
    spacing = Spacing(ctx.spacing)
    progressive = ProgressiveParams(steps=ctx.chain_steps, spacing=spacing, threads=THREADS, engine=engine).resolved(prior)
    lossless = CodecParams(steps=ctx.chain_steps, spacing=spacing, threads=THREADS, engine=engine).resolved(prior)
    schedule = prior.schedule(ctx.chain_steps, spacing)
    rounds, files = Rounds(), {}
    with pinned_threads(THREADS):
        for r in range(ROUNDS):
            rounds.round = r
            ctx.log(f"  round {r + 1}/{ROUNDS}, engine {progressive.engine.value}: encode/decode of {len(images)} images "
                    f"(load {_load():.2f})")
            _progressive(rounds, prior, images, progressive, files)
            ctx.log(f"  round {r + 1}/{ROUNDS}, engine {lossless.engine.value}: compress/decompress (load {_load():.2f})")
            _lossless(rounds, prior, images, lossless)
            if nll:
                ctx.log(f"  round {r + 1}/{ROUNDS}: nll on {len(nll_images)} images (load {_load():.2f})")
                _nll(rounds, prior, nll_images, schedule)
    return rounds


def _per_image(per_round: list[list[dict]], num: int) -> dict:
    """Best round of each side, item by item; seconds per image over ``num`` images."""
    best = [min(r[i]["seconds"] for r in per_round) for i in range(len(per_round[0]))]
    floor = [min(r[i]["floor_s"] for r in per_round) for i in range(len(per_round[0]))]
    return {"seconds_per_image": sum(best) / num, "floor_seconds_per_image": sum(floor) / num,
            "over_floor": sum(best) / sum(floor),
            "over_floor_per_round": [sum(x["seconds"] for x in r) / sum(x["floor_s"] for x in r) for r in per_round],
            "network_calls_per_image": sum(x["network_calls"] for x in per_round[0]) / num,
            "loadavg_1min_per_round": [max(x["loadavg_1min"] for x in r) for r in per_round]}


def summarize(rows: dict, num: int, steps: int, nll: bool = True) -> dict:
    out = {}
    for name in ("encode", "decode"):
        out[name] = _per_image(rows[name], num)
    enc = [x for r in rows["encode"] for x in r]
    out["encode"]["search_share"] = sum(x["search_s"] for x in enc) / sum(x["encode_result_s"] for x in enc)
    out["encode"]["step_records_per_image"] = sum(x["step_records"] for x in rows["encode"][0]) / num
    out["encode"]["floor"] = out["decode"]["floor"] = "the operation's network calls (batch 1) replayed alone"
    for name in ("compress", "decompress"):
        out[name] = _per_image(rows[name], num)
        fastest = min((r[0] for r in rows[name]), key=lambda x: x["seconds"])
        out[name].update(in_run_network_seconds_per_image=min(r[0]["in_run_network_s"] for r in rows[name]) / num,
                         over_in_run_network=fastest["seconds"] / fastest["in_run_network_s"],
                         batch_sizes=fastest["batch_sizes"],
                         floor="the operation's network calls (batches as it made them) replayed alone")
    if not nll:
        return out
    nll = [r[0] for r in rows["nll"]]
    rate = max(x["image_steps_per_s"] for x in nll)
    alone = max(x["network_alone_image_steps_per_s"] for x in nll)
    out["nll"] = {"image_steps_per_s": rate, "network_alone_image_steps_per_s": alone, "over_floor": alone / rate,
                  "over_floor_per_round": [x["network_alone_image_steps_per_s"] / x["image_steps_per_s"] for x in nll],
                  "seconds_per_image": steps / rate, "floor_seconds_per_image": steps / alone,
                  "images": nll[0]["image_steps"] // steps, "loadavg_1min_per_round": [x["loadavg_1min"] for x in nll],
                  "floor": f"the network alone at {DEFAULT_PAIRS_PER_CALL} pairs per call (bench.nll_throughput.network_ceiling)"}
    return out


def stage(ctx) -> dict:
    """``timing.{json,png}``."""
    num = min(ctx.num, QUICK_NUM if ctx.quick else NUM)
    images = ctx.images[:num]
    nll_images = ctx.images[: min(ctx.num, QUICK_NLL_IMAGES if ctx.quick else NLL_IMAGES)]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    progressive, lossless = (coding_engine(Engine.AUTO, "cpu", auto) for auto in (AUTO_PROGRESSIVE_ENGINE, None))
    engines = {"encode": progressive.value, "decode": progressive.value, "compress": lossless.value,
               "decompress": lossless.value, "nll": Engine.FLOAT32.value}
    by_engine, rows = {}, {}
    for engine in CODING_ENGINES:
        if engine is Engine.ONNXRUNTIME and not onnxruntime_available():
            continue
        ref = engine is Engine.FLOAT32  # nll runs float32 (the library's default), measured once
        rows[engine.value] = measure(ctx, images, nll_images, engine, nll=ref).rows
        by_engine[engine.value] = summarize(rows[engine.value], num, ctx.chain_steps, nll=ref)
    operations = {op: by_engine[engines[op]][op] for op in engines}
    body = ctx.write("timing", {
        "label": "diffcodec timing beside the network floor", "prior_digest": ctx.prior.digest, "data": ctx.data,
        "num_images": num, "num_dims": int(images[0].size), "steps": ctx.chain_steps, "spacing": ctx.spacing,
        "threads": THREADS, "rounds": ROUNDS,
        "rule": "best round of each side (per image for encode/decode); ratio = operation seconds / floor seconds; "
                "floors replay the network calls each operation made, alone, in the same run",
        "engines": engines,
        "operations": operations,
        "operations_by_engine": by_engine,
        "loadavg_1min_before_after": [round(load_before[0], 2), _load()],
        "wall_seconds": time.perf_counter() - t0,
        "measurements": rows,  # per engine
    })
    plot(body, ctx.png("timing"))
    return body


def plot(body: dict, path) -> None:
    plt = pyplot()
    ops = body["operations"]
    labels = [f"nll, {body['steps']} steps\n({ops[name]['images']} images)" if name == "nll" else name for name in OPERATIONS]
    op_s = [ops[name]["seconds_per_image"] for name in OPERATIONS]
    floor_s = [ops[name]["floor_seconds_per_image"] for name in OPERATIONS]
    x = np.arange(len(OPERATIONS))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.bar(x - 0.2, op_s, 0.4, label="operation", color="#ff7f0e")
    ax.bar(x + 0.2, floor_s, 0.4, label="network passes alone (floor)", color="#7f7f7f")
    for i, name in enumerate(OPERATIONS):
        ax.text(x[i] - 0.2, op_s[i] * 1.05, f"{op_s[i]:.2f} s\n{ops[name]['over_floor']:.2f}×", ha="center", va="bottom", fontsize=8)
    ax.set(xticks=x, xticklabels=labels, yscale="log", ylabel="seconds per image (best round)")
    ax.set_ylim(min(floor_s + op_s) / 2, max(op_s) * 4)
    loads = body["loadavg_1min_before_after"]
    ax.set_title(f"{body['num_images']} images, {body['steps']} steps, {body['threads']} torch thread, prior "
                 f"{body['prior_digest'][:8]}…, load {loads[0]:.1f}→{loads[1]:.1f}", fontsize=9)
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
