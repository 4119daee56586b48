"""The timing stage of bench/ on a tiny prior and two 8×8 images: it runs, writes its figure, and
its floors replay exactly the network calls the operations make."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import timing
from diffcodec.coding.lossless import CodecParams, compress, decompress, read_header

from .conftest import random_images, tiny_bench_context

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_ctx(tmp_path):
    return tiny_bench_context(tmp_path / "results", 2)


def test_timing_stage(tiny_ctx, monkeypatch):
    monkeypatch.setattr(timing, "MIN_CEILING_SECONDS", 0.1)
    body = timing.stage(tiny_ctx)
    out = tiny_ctx.out
    assert json.loads((out / "timing.json").read_text())["operations"] == body["operations"]
    assert (out / "timing.png").stat().st_size > 1000
    assert body["provenance"]["prior_digest"] == "ab" * 32 and body["steps"] == 20
    ops = body["operations"]
    assert set(ops) == set(timing.OPERATIONS)
    for name, op in ops.items():
        assert op["seconds_per_image"] > 0 and op["floor_seconds_per_image"] > 0, name
        assert len(op["over_floor_per_round"]) == timing.ROUNDS, name
    assert 0 <= ops["encode"]["search_share"] <= 1
    # one network call per visited state but the last (x_0 reuses the output at k = 1)
    assert ops["encode"]["network_calls_per_image"] == ops["encode"]["step_records_per_image"] - 1
    assert ops["nll"]["images"] == 2 and ops["nll"]["image_steps_per_s"] > 0
    for name in ("compress", "decompress"):
        assert ops[name]["over_in_run_network"] >= 1
        assert sum(ops[name]["batch_sizes"].values()) == ops[name]["network_calls_per_image"] * 2
    rows = body["measurements"]["float32"]["encode"]
    assert len(rows) == timing.ROUNDS and all(len(r) == 2 and r[0]["loadavg_1min"] >= 0 for r in rows)
    # every coding engine measured in the same run, floors replayed through that engine's network
    assert body["engines"]["encode"] == "float32" and body["engines"]["nll"] == "float32"
    for engine, by in body["operations_by_engine"].items():
        assert by["encode"]["network_calls_per_image"] > 0 and by["compress"]["floor_seconds_per_image"] > 0, engine
        assert ("nll" in by) == (engine == "float32")
    assert ops["compress"] == body["operations_by_engine"][body["engines"]["compress"]]["compress"]


def test_recorded_calls_are_the_lossless_batches(tiny_prior):
    """compress makes K calls per batch (plus K per bootstrap trial), decompress K per batch; the
    recorder sees every one, with its batch size."""
    tiny_prior.digest = "ab" * 32
    images = random_images(6).numpy()
    params = CodecParams(steps=5, threads=1)
    with timing.recorded_calls(tiny_prior) as calls:
        blob, _ = compress(tiny_prior, images, [f"{i}.png" for i in range(6)], params)
    assert len(calls) % 5 == 0
    with timing.recorded_calls(tiny_prior) as calls:
        out, _, _ = decompress(tiny_prior, blob)
    np.testing.assert_array_equal(out, images)
    assert len(calls) % 5 == 0 and sum(calls) == 5 * (6 - len(read_header(blob).boot))
    assert timing.replay_seconds(tiny_prior, calls) > 0
