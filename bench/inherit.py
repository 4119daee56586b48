"""``python -m bench.inherit``: how much of the network's engine speed-up nll, compress and encode keep
(issue #12), all measured side by side in one process.

For each engine of :data:`ENGINES` (float32 eager, the reference; ONNX Runtime; mixed), one torch
thread, in interleaved rounds (engine order alternating):

- **network**: the embedded prior's forward pass alone at batch 1 and 64 (x_t of test images at
  random steps of the codecs' chain, as ``bench.engines`` draws them), image-steps per second;
- **nll**: ``evaluate_nll`` (exact, the codecs' 100 steps, one worker) on the first ``--nll-num`` test images;
- **compress**: the lossless coder on the first ``--compress-num`` test images as one set (its batches
  ramp up from one tile, then run at 64); its files are decompressed once per engine and checked exact;
- **encode**: the progressive coder on each of the first ``--encode-num`` test images (one tile, so
  every network call is batch 1; mixed runs it through ONNX Runtime there); files decoded and checked.

Per command and engine: best-round seconds, the speed-up over float32 eager, the speed-up of the
network time measured inside the command, and the **share** the issue asks about: the command's
speed-up over the network's own at the batch the command runs at (64 for nll and compress, whose calls
hold 32–64 inputs; 1 for encode). Issue #12's target: a share of at least 0.8. Writes ``inherit.json``
and ``inherit.png`` in ``--out``.

    python -m bench.inherit                     # about 33 minutes here
    python -m bench.inherit --compress-num 32 --nll-num 4 --encode-num 2 --rounds 1 --out /tmp/x  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from .provenance import RESULTS, provenance, write_json

ENGINES = ("float32", "onnxruntime", "mixed")
BATCHES = (1, 64)
NETWORK_SECONDS = 2.0
TARGET_SHARE = 0.8


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _order(r: int) -> tuple[str, ...]:
    return ENGINES if r % 2 == 0 else ENGINES[::-1]


def run(args) -> dict:
    import numpy as np
    import torch

    from diffcodec.checkpoint import load_prior
    from diffcodec.coding.lossless import CodecParams, compress, decompress, pinned_threads
    from diffcodec.coding.progressive import ProgressiveParams, decode, encode
    from diffcodec.data import load_images
    from diffcodec.defaults import CODEC_SPACING, CODEC_STEPS
    from diffcodec.likelihood import evaluate_nll

    from .engines import build, pair_inputs, throughput

    def log(msg: str) -> None:
        print(f"[inherit {time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)

    t_start = time.perf_counter()
    prior = load_prior()
    shape = prior.image_shape
    need = max(args.compress_num, args.nll_num, args.encode_num)
    images = np.asarray(load_images(args.data, shape[0], shape[1:]).subset(need).images)
    schedule = prior.schedule(CODEC_STEPS, CODEC_SPACING)
    inputs = {b: pair_inputs(prior, images, schedule, b) for b in BATCHES}
    nets = {e: build(e, prior, *inputs[1]) for e in ENGINES}
    commands = (*(f"network_{b}" for b in BATCHES), "nll", "compress", "encode")
    rows: dict[str, dict[str, list]] = {c: {e: [] for e in ENGINES} for c in commands}
    blobs, files = {}, {}
    with pinned_threads(1), torch.inference_mode():
        for e in ENGINES:  # warm: ONNX export / session, bf16 kernels
            for b in BATCHES:
                nets[e](*inputs[b])
    for e in ENGINES:  # and the candidate search's compiled code, loaded by the first encode of a process
        encode(prior, images[0], ProgressiveParams(engine=e, steps=10))
    with pinned_threads(1):
        for r in range(args.rounds):
            for e in _order(r):
                with torch.inference_mode():
                    for b in BATCHES:
                        rate = throughput(nets[e], *inputs[b], NETWORK_SECONDS)
                        rows[f"network_{b}"][e].append({"image_steps_per_s": rate, "load1": _load()})
                log(f"round {r + 1} {e}: network " + " / ".join(f"{rows[f'network_{b}'][e][-1]['image_steps_per_s']:.0f}"
                                                             for b in BATCHES)
                    + f" image-steps/s at batch {' / '.join(map(str, BATCHES))}")
            for e in _order(r):
                res = evaluate_nll(prior, images[: args.nll_num], schedule, workers=1, engine=e)
                rows["nll"][e].append({"seconds": res.seconds, "bits_per_dim": res.total_bpd, "load1": _load()})
                log(f"round {r + 1} {e}: nll {res.seconds:.1f} s, {res.total_bpd:.5f} bits/dim")
            if r < args.compress_rounds:
                names = [f"i{i:05d}.png" for i in range(args.compress_num)]
                for e in _order(r):
                    blob, stats = compress(prior, images[: args.compress_num], names, CodecParams(engine=e))
                    blobs[e] = blob
                    rows["compress"][e].append({"seconds": stats.seconds, "network_seconds": stats.network_seconds,
                                                "file_bytes": len(blob), "load1": _load()})
                    log(f"round {r + 1} {e}: compress {stats.seconds / args.compress_num:.3f} s/image "
                        f"(network {stats.network_seconds / args.compress_num:.3f}), {len(blob)} bytes")
            for e in _order(r):
                total = net_s = search_s = 0.0
                size = 0
                for i in range(args.encode_num):
                    enc = encode(prior, images[i], ProgressiveParams(engine=e))
                    total, net_s, search_s, size = (total + enc.seconds, net_s + enc.network_seconds,
                                                    search_s + enc.search_seconds, size + len(enc.data))
                    files[(e, i)] = enc.data
                rows["encode"][e].append({"seconds": total, "network_seconds": net_s, "search_seconds": search_s,
                                          "file_bytes": size, "load1": _load()})
                log(f"round {r + 1} {e}: encode {total / args.encode_num:.3f} s/image (network {net_s / args.encode_num:.3f},"
                    f" search {search_s / args.encode_num:.3f})")
    checks = {}
    for e, blob in blobs.items():
        out, _, _ = decompress(prior, blob)
        checks[f"decompress_{e}_exact"] = bool(np.array_equal(out, images[: args.compress_num]))
    for (e, i), data in files.items():
        checks.setdefault(f"decode_{e}_exact", True)
        checks[f"decode_{e}_exact"] &= bool(np.array_equal(decode(prior, data).image, images[i]))
    log(f"checks: {checks}")
    return summarize(rows, checks, args, time.perf_counter() - t_start, provenance(prior, data=args.data))


def _rounds(per_engine: dict) -> list[dict]:
    """{engine: [round rows]} → [{engine: row} per round]."""
    return [dict(zip(per_engine, r)) for r in zip(*per_engine.values())]


def summarize(rows: dict, checks: dict, args, wall: float, prov: dict) -> dict:
    def best_rate(cmd: str, e: str) -> float:
        return max(x["image_steps_per_s"] for x in rows[cmd][e])

    def best_seconds(cmd: str, e: str) -> dict:
        return min(rows[cmd][e], key=lambda x: x["seconds"])

    network = {f"batch_{b}": {e: {"image_steps_per_s": best_rate(f"network_{b}", e),
                                  "speedup": best_rate(f"network_{b}", e) / best_rate(f"network_{b}", "float32")}
                              for e in ENGINES} for b in BATCHES}
    runs_at = {"nll": 64, "compress": 64, "encode": 1}
    commands = {}
    for cmd, batch in runs_at.items():
        ref = best_seconds(cmd, "float32")
        per = {}
        for e in ENGINES:
            b = best_seconds(cmd, e)
            speedup = ref["seconds"] / b["seconds"]
            net = network[f"batch_{batch}"][e]["speedup"]
            per[e] = {"best_round": b, "speedup": speedup, "network_speedup_at_its_batch": net,
                      "share": speedup / net if e != "float32" else None,
                      "meets_target": (speedup / net >= TARGET_SHARE) if e != "float32" else None}
            if "network_seconds" in b:
                per[e]["in_command_network_speedup"] = ref["network_seconds"] / b["network_seconds"]
                per[e]["network_fraction"] = b["network_seconds"] / b["seconds"]
            if "search_seconds" in b:
                per[e]["search_fraction"] = b["search_seconds"] / b["seconds"]
            if e != "float32":  # round by round: each command round against the same round's network
                paired = [(f["seconds"] / x["seconds"]) / (n[e]["image_steps_per_s"] / n["float32"]["image_steps_per_s"])
                          for f, x, n in zip(rows[cmd]["float32"], rows[cmd][e], _rounds(rows[f"network_{batch}"]))]
                per[e]["share_per_round"] = paired
                per[e]["share_median_of_rounds"] = statistics.median(paired)
        commands[cmd] = {"network_batch": batch, "engines": per}
    return {
        "label": "share of the network's engine speed-up that nll, compress and encode keep (issue #12)",
        "rule": "speed-up = best round of float32 eager / best round of the engine (seconds), same run; "
                "share = command speed-up / the network's own speed-up at the batch the command runs at; "
                "share_median_of_rounds: the same ratio within each round (the machine's speed drifts between rounds), median",
        "target_share": TARGET_SHARE, "threads": 1, "rounds": args.rounds, "compress_rounds": args.compress_rounds,
        "nll_images": args.nll_num, "compress_images": args.compress_num,
        "encode_images": args.encode_num, "network": network, "commands": commands, "checks": checks,
        "rows": rows, "wall_seconds": wall, "provenance": prov,
    }


def plot(body: dict, path: Path) -> None:
    from .plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    labels, width = ["network b=1", "network b=64", "nll", "compress", "encode"], 0.38
    for j, e in enumerate(("onnxruntime", "mixed")):
        vals = [body["network"]["batch_1"][e]["speedup"], body["network"]["batch_64"][e]["speedup"],
                *(body["commands"][c]["engines"][e]["speedup"] for c in ("nll", "compress", "encode"))]
        bars = ax.bar([i + (j - 0.5) * width for i in range(len(labels))], vals, width, label=e)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    for i, c in enumerate(("nll", "compress", "encode"), start=2):
        net = body["network"][f"batch_{body['commands'][c]['network_batch']}"]["mixed"]["speedup"]
        ax.plot([i - 0.45, i + 0.45], [TARGET_SHARE * net] * 2, "k--", lw=0.8)
    ax.axhline(1.0, color="grey", lw=0.6)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("speed-up over float32 eager")
    ax.set_title("engine speed-ups, one run, one thread (dashed: 80 % of mixed's network speed-up)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.inherit", description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of network, nll and encode (default 3)")
    ap.add_argument("--compress-rounds", type=int, default=1, help="rounds that also compress (default 1: the longest part)")
    ap.add_argument("--nll-num", type=int, default=32)
    ap.add_argument("--compress-num", type=int, default=256)
    ap.add_argument("--encode-num", type=int, default=10)
    ap.add_argument("--data", default="fashion-mnist:test")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--summarize", type=Path, metavar="JSON",
                    help="recompute the summary and plot from the measurements in an inherit.json (no timing)")
    args = ap.parse_args(argv)
    if args.summarize:
        old = json.loads(args.summarize.read_text())
        args.rounds, args.compress_rounds = old["rounds"], old["compress_rounds"]
        args.nll_num, args.compress_num, args.encode_num = old["nll_images"], old["compress_images"], old["encode_images"]
        prov = old.get("provenance") or {k: old[k] for k in ("commit", "dirty", "prior_digest", "data", "codecs", "machine")}
        body = summarize(old["rows"], old["checks"], args, old["wall_seconds"], prov)
    else:
        body = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "inherit.json", body)
    plot(body, args.out / "inherit.png")
    for cmd, c in body["commands"].items():
        print(cmd, {e: (round(v["speedup"], 3), None if v["share"] is None else round(v["share"], 3))
                    for e, v in c["engines"].items()})


if __name__ == "__main__":
    main()
