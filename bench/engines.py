"""Engines (issue #12): the prior's forward pass through each engine, side by side in one run.

For each engine of :data:`ENGINES` and each batch of :data:`BATCHES` (1, 8, 64), on one torch
thread (as every command runs the network: the coders pin one, nll runs one per worker):

- **throughput**, image-steps per second: the engine called on fixed inputs (x_t ~ q(x_t|x_0) of
  the first test images at random steps of the codecs' chain, with their timesteps) for
  :data:`SECONDS`, at least :data:`MIN_CALLS` calls. :data:`ROUNDS` interleaved rounds (each round
  measures every engine at every batch, the engine order rotating from round to round); the
  headline is each engine's best round (timeit's rule: slower rounds are other processes' doing),
  the 1-minute load average is recorded with every measurement, and the speed-up over float32
  eager is also given round by round (same round, same load);
- **max |Δε|** (and |Δv|, the variance output) against float32 eager on the same inputs, per batch;
- **bits/dim**: :func:`diffcodec.terms.compute_terms` (every term of the codecs' 100-step chain,
  the same seeded noise for every engine) on the first :data:`BPD_IMAGES` test images with the
  network run through the engine, in calls of :data:`PAIRS_PER_CALL` pairs; the change against
  float32 eager is relative, of the mean over images.

Engines: the torch ones of :class:`diffcodec.engines.Engine` (float32 eager, bf16 autocast,
channels-last, both, torch.compile with inductor in float32 and under bf16 autocast: the first
call at each batch is timed, minus a steady call, as its compile time, from an empty inductor
cache), ONNX Runtime (:class:`diffcodec.engines.OnnxRuntimeNet`: the TorchScript ONNX export, CPU
provider, one intra-op thread), mixed (:class:`diffcodec.engines.MixedNet`: bf16 autocast above
t = T/100, ONNX Runtime at and below it and for calls of fewer than 8 such inputs; the inputs' timesteps
are drawn from the codecs' schedule, so about one in ten runs in float32) and OpenVINO (``openvino.convert_model`` of the torch network, one static-shape model per batch, one
inference thread; ``f32`` and ``bf16`` inference precision: OpenVINO's default on CPUs with bf16
units is bf16). An engine that cannot be built or run here is recorded with a one-line reason.

Targets (issue #12): ≥ 1.5× float32 eager at batch 64 and ≥ 1.3× at batch 1 (best rounds of the same
run), bits/dim changed by less than 0.2 %. Writes ``engines.json`` and ``engines.png``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from torch import nn

import diffcodec.engines as diffcodec_engines
from diffcodec.diffusion import pixels_to_model, q_sample
from diffcodec.engines import Engine, EngineNet, OnnxRuntimeNet, with_engine, with_net
from diffcodec.schedule import Spacing
from diffcodec.terms import compute_terms

from .plotting import pyplot

REFERENCE = "float32"
ENGINES = (*(e.value for e in Engine if e is not Engine.AUTO), "openvino", "openvino-bf16")
BATCHES = (1, 8, 64)
ROUNDS, QUICK_ROUNDS = 5, 2
SECONDS, QUICK_SECONDS = 1.0, 0.3
MIN_CALLS = 2
THREADS = 1
BPD_IMAGES, QUICK_BPD_IMAGES = 32, 8
PAIRS_PER_CALL = 64
COMPILE_BUDGET_S = 600  # no further compiled engine is built once compiling has taken this long
TARGETS = {"speedup_batch64": 1.5, "speedup_batch1": 1.3, "bpd_rel_change": 0.002}
NLL_ENGINES = (REFERENCE, Engine.ONNXRUNTIME.value, Engine.MIXED.value)  # engines `nll` may run (auto picks one)
NLL_IMAGES, QUICK_NLL_IMAGES = 32, 4
NLL_ROUNDS, QUICK_NLL_ROUNDS = 3, 1


class Unavailable(Exception):
    """An engine that cannot be built or run here; the message is the one-line reason."""


class ExternalNet(nn.Module):
    """A network run by another runtime: ``call(x, t)`` on float32 numpy arrays → numpy output.

    The torch network stays a submodule (``inner``) so that the prior's device is read as usual.
    """

    def __init__(self, net: nn.Module, call):
        super().__init__()
        self.inner, self._call = net, call

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self._call(x.detach().float().contiguous().numpy(), t.detach().float().contiguous().numpy())
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))


def openvino_net(net: nn.Module, x: torch.Tensor, t: torch.Tensor, precision: str) -> nn.Module:
    """One static-shape compiled model per batch size, built at the first call with that size."""
    import openvino as ov

    core, model = ov.Core(), ov.convert_model(net, example_input=(x, t))
    config = {"INFERENCE_NUM_THREADS": THREADS, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
              "ENABLE_CPU_PINNING": False, "INFERENCE_PRECISION_HINT": precision}
    compiled = {}

    def call(xs: np.ndarray, ts: np.ndarray) -> np.ndarray:
        n = len(xs)
        if n not in compiled:
            model.reshape({model.inputs[0]: [n, *xs.shape[1:]], model.inputs[1]: [n]})
            compiled[n] = core.compile_model(model, "CPU", config).create_infer_request()
        return compiled[n].infer([xs, ts])[0]

    return ExternalNet(net, call)


def build(name: str, prior, x: torch.Tensor, t: torch.Tensor) -> nn.Module:
    """The engine ``name`` around ``prior.net``; Unavailable with a one-line reason if it fails here."""
    net = prior.net
    try:
        if name == Engine.ONNXRUNTIME.value:
            return OnnxRuntimeNet(net, tuple(x.shape[1:]))
        if name == Engine.MIXED.value:
            return with_engine(prior, Engine.MIXED).net  # diffcodec.engines.MixedNet, built as the commands build it
        if name.startswith("openvino"):
            return openvino_net(net, x, t, "bf16" if name.endswith("bf16") else "f32")
        return net if name == REFERENCE else EngineNet(net, Engine(name))
    except Exception as err:  # an engine's failure is a result, not a crash of the stage
        raise Unavailable(_one_line(err)) from None


def _one_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def pair_inputs(prior, images: np.ndarray, schedule, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n (image, step) inputs as the network sees them: x_t float32 [n, C, H, W], t float32 [n].

    Image i % len(images) at a uniformly drawn step of ``schedule``, x_t ~ q(x_t|x_0) (float64, then cast).
    """
    gen = torch.Generator().manual_seed(seed)
    x0 = pixels_to_model(torch.as_tensor(images[np.arange(n) % len(images)]), torch.float64)
    k = torch.randint(0, schedule.num_steps, (n,), generator=gen)
    tab = prior.tables(schedule, "cpu")
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    return q_sample(x0, tab.gather("alpha_bar", k, x0), noise).float(), tab["timesteps"][k].float()


def throughput(run, x: torch.Tensor, t: torch.Tensor, seconds: float) -> float:
    """Image-steps per second of ``run(x, t)``: calls until ``seconds`` have passed (at least MIN_CALLS)."""
    calls, t0 = 0, time.perf_counter()
    while True:
        run(x, t)
        calls += 1
        elapsed = time.perf_counter() - t0
        if calls >= MIN_CALLS and elapsed >= seconds:
            return calls * len(x) / elapsed


def warm_up(run, inputs: dict) -> dict[int, float]:
    """First call at each batch, minus a second (steady) one: compile time for compiled engines."""
    out = {}
    for b, (x, t) in inputs.items():
        t0 = time.perf_counter()
        run(x, t)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        run(x, t)
        out[b] = max(0.0, first - (time.perf_counter() - t0))
    return out


def output_error(run, reference: dict, inputs: dict, channels: int) -> dict:
    """Max |Δε| and |Δv| (None without v) against the reference outputs, over every batch."""
    d_eps = d_v = 0.0
    for b, (x, t) in inputs.items():
        diff = (run(x, t).float() - reference[b]).abs()
        d_eps = max(d_eps, float(diff[:, :channels].max()))
        if diff.shape[1] > channels:
            d_v = max(d_v, float(diff[:, channels:].max()))
    return {"max_abs_d_eps": d_eps, "max_abs_d_v": d_v if reference[next(iter(reference))].shape[1] > channels else None}


def bits_per_dim(prior, net: nn.Module, images: np.ndarray, schedule) -> dict:
    """Every term of the chain with the network run by ``net``; the same seeded noise for every engine."""
    t0 = time.perf_counter()
    terms = compute_terms(with_net(prior, net), images, schedule, torch.Generator().manual_seed(0), max_batch=PAIRS_PER_CALL)
    image_bpd = terms.total_bpd().numpy()
    return {"total_bpd": float(image_bpd.mean()), "image_bpd": image_bpd.tolist(), "seconds": time.perf_counter() - t0}


@contextlib.contextmanager
def fresh_inductor_cache():
    """An empty inductor cache for the block (compile times from scratch); the caller's
    TORCHINDUCTOR_CACHE_DIR is restored after."""
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def setup(name: str, prior, inputs: dict, reference: dict, compile_spent: float):
    """Build engine ``name``, warm it up at every batch, compare its outputs. → (runner or None, record)."""
    compiled = name in (Engine.COMPILE.value, Engine.COMPILE_BF16.value)
    if compiled and compile_spent > COMPILE_BUDGET_S:
        return None, {"unavailable": f"skipped: compiling already took {compile_spent:.0f} s (budget {COMPILE_BUDGET_S} s)"}
    x, t = inputs[max(inputs)]
    t0 = time.perf_counter()
    try:
        run = build(name, prior, x, t)
        build_s = time.perf_counter() - t0
        with torch.inference_mode():
            first = warm_up(run, inputs)
            error = output_error(run, reference, inputs, prior.image_shape[0])
    except Unavailable as err:
        return None, {"unavailable": str(err)}
    except Exception as err:  # a build that succeeds and a first call that fails (inductor codegen, …)
        return None, {"unavailable": _one_line(err)}
    key = "compile_seconds" if compiled else "first_call_extra_seconds"
    return run, {"build_seconds": build_s, key: {str(b): s for b, s in first.items()}, **error}


def timed_rounds(runners: dict, inputs: dict, rounds: int, seconds: float, log) -> tuple[dict, list]:
    """rates[name][batch] = image-steps/s per round; every engine at every batch in every round, the
    engine order rotated by one each round. Also the load average after each measurement."""
    names = list(runners)
    rates = {name: {str(b): [] for b in inputs} for name in names}
    loads = []
    with torch.inference_mode():
        for r in range(rounds):
            order = rotated(names, r)
            for b, (x, t) in inputs.items():
                for name in order:
                    rates[name][str(b)].append(throughput(runners[name], x, t, seconds))
                    loads.append(round(os.getloadavg()[0], 2))
            log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {rates[n][str(max(inputs))][-1]:.0f}" for n in names)
                + f" image-steps/s at batch {max(inputs)} (load {loads[-1]:.2f})")
    return rates, loads


def summarize(records: dict, rates: dict, bpd: dict) -> dict:
    """Per engine: best/median rates, speed-ups over float32 eager (best rounds, and round by round),
    bits/dim change, and which targets it meets."""
    ref_rates, ref_bpd = rates[REFERENCE], bpd[REFERENCE]
    for name, rec in records.items():
        if name not in rates:
            continue
        per = rates[name]
        rec["best_image_steps_per_s"] = {b: max(v) for b, v in per.items()}
        rec["median_image_steps_per_s"] = {b: statistics.median(v) for b, v in per.items()}
        rec["speedup"] = {b: max(v) / max(ref_rates[b]) for b, v in per.items()}
        rec["speedup_per_round"] = {b: [e / f for e, f in zip(v, ref_rates[b])] for b, v in per.items()}
        rec["image_steps_per_s"] = per
        if name in bpd and "total_bpd" in bpd[name]:
            mine = bpd[name]
            rec["total_bpd"] = mine["total_bpd"]
            rec["bpd_rel_change"] = mine["total_bpd"] / ref_bpd["total_bpd"] - 1.0
            rec["max_abs_d_image_bpd"] = float(np.max(np.abs(np.subtract(mine["image_bpd"], ref_bpd["image_bpd"]))))
            rec["bpd_seconds"] = mine["seconds"]
        elif name in bpd:
            rec["bpd_unavailable"] = bpd[name]["unavailable"]
        rec["meets"] = meets(rec)
    return records


def meets(rec: dict) -> dict:
    """The issue's targets, each True/False (None when not measured here), and all of them."""
    speed = rec.get("speedup", {})
    out = {"speedup_batch64": speed["64"] >= TARGETS["speedup_batch64"] if "64" in speed else None,
           "speedup_batch1": speed["1"] >= TARGETS["speedup_batch1"] if "1" in speed else None,
           "bpd_rel_change": abs(rec["bpd_rel_change"]) < TARGETS["bpd_rel_change"] if "bpd_rel_change" in rec else None}
    out["all"] = all(v is True for v in out.values())
    return out


def verdict(records: dict) -> dict:
    """Which engines meet every target; the fastest engine at each batch among those whose bits/dim
    change stays under the target."""
    holding = {n: r for n, r in records.items() if r.get("meets", {}).get("bpd_rel_change")}
    fastest = {b: max(holding, key=lambda n: holding[n]["speedup"][b]) for b in next(iter(holding.values()))["speedup"]} if holding else {}
    return {"meet_all_targets": [n for n, r in records.items() if r.get("meets", {}).get("all")],
            "fastest_within_bpd_target": {b: {"engine": n, "speedup": holding[n]["speedup"][b]} for b, n in fastest.items()},
            "unavailable": {n: r["unavailable"] for n, r in records.items() if "unavailable" in r}}


def measure(ctx, engines, batches, rounds: int, seconds: float, bpd_images: int) -> dict:
    from diffcodec.coding.lossless import pinned_threads

    prior = ctx.prior
    schedule = prior.schedule(ctx.chain_steps, Spacing(ctx.spacing))
    images = ctx.images[:bpd_images]
    x, t = pair_inputs(prior, images, schedule, max(batches))
    inputs = {b: (x[:b].contiguous(), t[:b].contiguous()) for b in batches}
    records, runners, bpd, spent = {}, {}, {}, 0.0
    # every compiled engine compiles EngineNet._eager once per batch size, and dynamo counts graphs per
    # function: above its default limit of 8 it would run the rest eagerly, unannounced
    with pinned_threads(THREADS), fresh_inductor_cache(), torch._dynamo.config.patch(recompile_limit=64):
        with torch.inference_mode():
            reference = {b: prior.net(*inputs[b]).float() for b in batches}
        for name in engines:
            t0 = time.perf_counter()
            run, records[name] = setup(name, prior, inputs, reference, spent)
            if "compile_seconds" in records[name]:
                spent += time.perf_counter() - t0
            ctx.log(f"  {name}: " + (records[name].get("unavailable") or f"ready in {time.perf_counter() - t0:.1f} s, "
                                      f"max |d eps| {records[name]['max_abs_d_eps']:.2e}"))
            if run is not None:
                runners[name] = run
        rates, loads = timed_rounds(runners, inputs, rounds, seconds, ctx.log)
        for name, run in runners.items():
            try:
                with torch.inference_mode():
                    bpd[name] = bits_per_dim(prior, run, images, schedule)
            except Exception as err:  # recorded, like an engine that cannot be built
                bpd[name] = {"unavailable": _one_line(err)}
            ctx.log(f"  {name}: bits/dim {bpd[name].get('total_bpd', bpd[name].get('unavailable'))}")
    return {"engines": summarize(records, rates, bpd), "loadavg_1min_per_measurement": loads,
            "reference_total_bpd": bpd[REFERENCE]["total_bpd"], "image_bpd_reference": bpd[REFERENCE]["image_bpd"]}


def versions() -> dict:
    out = {}
    for package in ("onnxruntime", "onnx", "openvino"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def rotated(names: list, r: int) -> list:
    """``names`` rotated left by ``r`` places: round r's order, so no engine always runs first."""
    return names[r % len(names):] + names[: r % len(names)]


def cpu_flags() -> list[str]:
    """The CPU flags that matter to these engines (diffcodec.engines.cpu_flags)."""
    keep = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "avx512_fp16")
    return sorted(f for f in diffcodec_engines.cpu_flags() if f in keep)


def nll_by_engine(ctx, engines, num: int, rounds: int, network: dict) -> dict:
    """``evaluate_nll`` itself (exact, the codecs' steps, one worker and one thread, building the engine
    as the command does) per engine in interleaved rounds, order rotating. Per engine: best seconds,
    speed-up over float32, bits/dim and its change, and the share of the network's batch-64 speed-up
    it keeps (nll speed-up / network speed-up)."""
    from diffcodec.coding.lossless import pinned_threads
    from diffcodec.engines import onnxruntime_available
    from diffcodec.likelihood import evaluate_nll

    usable = [e for e in engines if e != Engine.ONNXRUNTIME.value or onnxruntime_available()]
    images = ctx.images[:num]
    schedule = ctx.prior.schedule(ctx.chain_steps, Spacing(ctx.spacing))
    seconds, bpd = {e: [] for e in usable}, {}
    with pinned_threads(THREADS):
        for r in range(rounds):
            for name in rotated(usable, r):
                t0 = time.perf_counter()
                res = evaluate_nll(ctx.prior, images, schedule, workers=1, engine=name)
                seconds[name].append(time.perf_counter() - t0)
                bpd[name] = res.total_bpd
                ctx.log(f"  nll {name}: {seconds[name][-1]:.1f} s, {res.total_bpd:.5f} bits/dim")
    out = {}
    for name in usable:
        speedup = min(seconds[REFERENCE]) / min(seconds[name])
        net = network.get(name, {}).get("speedup", {}).get("64")
        out[name] = {"seconds": min(seconds[name]), "seconds_per_round": seconds[name], "speedup": speedup,
                     "bits_per_dim": bpd[name], "bpd_rel_change": bpd[name] / bpd[REFERENCE] - 1.0,
                     "network_speedup_batch64": net, "share_of_network_speedup": None if not net else speedup / net}
    return {"images": num, "steps": ctx.chain_steps, "rounds": rounds, "workers": 1, "engines": out}


def stage(ctx) -> dict:
    """``engines.{json,png}``."""
    rounds, seconds = (QUICK_ROUNDS, QUICK_SECONDS) if ctx.quick else (ROUNDS, SECONDS)
    bpd_images = min(ctx.num, QUICK_BPD_IMAGES if ctx.quick else BPD_IMAGES)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    result = measure(ctx, ENGINES, BATCHES, rounds, seconds, bpd_images)
    ctx.log("  nll end to end per engine")
    result["nll"] = nll_by_engine(ctx, NLL_ENGINES, min(ctx.num, QUICK_NLL_IMAGES if ctx.quick else NLL_IMAGES),
                                  QUICK_NLL_ROUNDS if ctx.quick else NLL_ROUNDS, result["engines"])
    body = ctx.write("engines", {
        "label": "the prior's forward pass through each engine (issue #12)", "prior_digest": ctx.prior.digest,
        "data": ctx.data, "bpd_images": bpd_images, "steps": ctx.chain_steps, "spacing": ctx.spacing,
        "pairs_per_call_bpd": PAIRS_PER_CALL, "batches": list(BATCHES), "threads": THREADS, "rounds": rounds,
        "seconds_per_measurement": seconds, "reference": REFERENCE, "targets": TARGETS,
        "rule": "speed-up = best round of the engine / best round of float32 eager at the same batch (image-steps/s); "
                "bpd_rel_change = mean bits/dim with the engine / with float32 eager - 1, same images and noise",
        **verdict(result["engines"]), **result,
        "engine_packages": versions(), "cpu_flags": cpu_flags(),
        "loadavg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "wall_seconds": time.perf_counter() - t0,
    })
    plot(body, ctx.png("engines"))
    return body


def plot(body: dict, path) -> None:
    plt = pyplot()
    records = body["engines"]
    names = list(records)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [3, 2]})
    x, width = np.arange(len(names)), 0.8 / len(body["batches"])
    for i, b in enumerate(body["batches"]):
        values = [records[n].get("speedup", {}).get(str(b), np.nan) for n in names]
        ax1.bar(x + (i - (len(body["batches"]) - 1) / 2) * width, values, width, label=f"batch {b}")
    for n_i, n in enumerate(names):
        if "unavailable" in records[n]:
            ax1.text(x[n_i], 0.05, "n/a", ha="center", va="bottom", fontsize=8, rotation=90)
    ax1.axhline(TARGETS["speedup_batch64"], color="k", ls="--", lw=0.8, label="target at batch 64")
    ax1.axhline(TARGETS["speedup_batch1"], color="k", ls=":", lw=0.8, label="target at batch 1")
    ax1.axhline(1.0, color="#999", lw=0.6)
    ax1.set(xticks=x, ylabel="speed-up over float32 eager (best rounds)")
    ax1.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax1.legend(fontsize=7)
    change = [100 * records[n].get("bpd_rel_change", np.nan) for n in names]
    ax2.bar(x, change, color="#d62728")
    limit = 100 * TARGETS["bpd_rel_change"]
    ax2.axhspan(-limit, limit, color="#2ca02c", alpha=0.15, label=f"target ±{limit:.1f} %")
    ax2.set(xticks=x, ylabel="bits/dim change (%)")
    ax2.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax2.legend(fontsize=7)
    loads = body["loadavg_1min_before_after"]
    fig.suptitle(f"Engines: prior {body['prior_digest'][:8]}…, {body['threads']} thread, best of {body['rounds']} rounds, "
                 f"bits/dim on {body['bpd_images']} images × {body['steps']} steps (float32 {body['reference_total_bpd']:.4f}), "
                 f"load {loads[0]:.1f}→{loads[1]:.1f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
