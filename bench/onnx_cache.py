"""``python -m bench.onnx_cache [--rounds R]``: what keeping the exported ONNX graph on disk saves
per command (issue #12; diffcodec.engines.onnx_graph).

Each command runs as a user runs it, a fresh ``diffcodec`` process, with ``DIFFCODEC_ONNX_CACHE``
pointing at a folder of this run's own (``cold``: each command's first run; the first command fills
the folder, and the others, on the same prior, find the graph there already; ``warm``: the later
runs) and set to ``off`` (every process exports the network anew), in interleaved rounds whose
order alternates. Per command: wall seconds of every round, the best and the median warm and off,
the saving, and whether the outputs of the two are the same bytes (they must be: the cached graph
is the graph a fresh export gives). Writes ``onnx_cache.json``.

    compress   diffcodec compress examples/fashion/test-00.png (engine auto: mixed on this CPU)
    encode     diffcodec encode examples/fashion/test-00.png --engine onnxruntime
    nll        diffcodec nll --data examples/fashion --steps 20 --json (engine auto)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .provenance import RESULTS, ROOT, provenance, write_json

IMAGE = ROOT / "examples" / "fashion" / "test-00.png"
COMMANDS = {
    "compress": lambda out: ["compress", str(IMAGE), "-o", str(out / "a.dcl")],
    "encode": lambda out: ["encode", str(IMAGE), "--engine", "onnxruntime", "-o", str(out / "a.dcp")],
    "nll": lambda out: ["nll", "--data", str(ROOT / "examples" / "fashion"), "--steps", "20", "--json"],
}


def run_once(name: str, cache: str, out: Path) -> tuple[float, bytes]:
    """Wall seconds of one fresh process and what it produced (the file, or nll's bits/dim line)."""
    for f in out.iterdir():
        f.unlink()
    env = {**os.environ, "DIFFCODEC_ONNX_CACHE": cache}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "diffcodec_cli.main", *COMMANDS[name](out)], env=env,
                          capture_output=True, check=True)
    seconds = time.perf_counter() - t0
    files = sorted(out.iterdir())
    if files:
        return seconds, files[0].read_bytes()
    import json

    return seconds, repr(json.loads(proc.stdout)["total_bpd"]).encode()


def measure(rounds: int) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache, work = Path(tmp) / "cache", Path(tmp) / "work"
        work.mkdir()
        for name in COMMANDS:
            cold, first = run_once(name, str(cache), work)
            seconds = {"warm": [], "off": []}
            same = True
            for r in range(rounds):
                for mode in (("warm", "off") if r % 2 == 0 else ("off", "warm")):
                    s, produced = run_once(name, str(cache) if mode == "warm" else "off", work)
                    seconds[mode].append(s)
                    same &= produced == first
            rec = {"command": "diffcodec " + " ".join(COMMANDS[name](Path("OUT"))), "cold_seconds": cold,
                   "seconds": seconds, "same_output": same}
            for mode in seconds:
                rec[f"best_{mode}"] = min(seconds[mode])
                rec[f"median_{mode}"] = statistics.median(seconds[mode])
            rec["median_saving_seconds"] = rec["median_off"] - rec["median_warm"]
            out[name] = rec
            print(f"{name}: cold {cold:.2f} s, median warm {rec['median_warm']:.2f} s, off {rec['median_off']:.2f} s, "
                  f"same output {same}", flush=True)
        cached = sorted(p.stat().st_size for p in cache.glob("*.onnx"))
    return {"rounds": rounds, "commands": out, "cache_files_bytes": cached,
            "rule": "fresh process per run; warm = the cache filled by the cold run, off = DIFFCODEC_ONNX_CACHE=off; "
                    "rounds interleaved, order alternating"}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.onnx_cache", description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved warm/off rounds per command")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    body = measure(args.rounds)
    body["wall_seconds"] = time.perf_counter() - t0
    body["provenance"] = provenance()
    write_json(args.out / "onnx_cache.json", body)


if __name__ == "__main__":
    main()
