"""The engines stage of bench/ on a tiny prior: float32 and bf16 only (no compile, ONNX Runtime or
OpenVINO here), a few hundredths of a second per measurement."""

from __future__ import annotations

import json

import pytest
import torch

from bench import engines
from diffcodec.engines import Engine, with_engine

from .conftest import tiny_bench_context

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_ctx(tmp_path, monkeypatch):
    for name, value in {"ENGINES": ("float32", "bf16", "no-such-engine"), "BATCHES": (1, 4), "QUICK_ROUNDS": 2,
                        "QUICK_SECONDS": 0.02, "QUICK_BPD_IMAGES": 3}.items():
        monkeypatch.setattr(engines, name, value)
    return tiny_bench_context(tmp_path / "results", 4)


def test_engines_stage(tiny_ctx):
    body = engines.stage(tiny_ctx)
    out = tiny_ctx.out
    assert json.loads((out / "engines.json").read_text())["engines"] == body["engines"]
    assert (out / "engines.png").stat().st_size > 1000
    assert body["provenance"]["prior_digest"] == "ab" * 32 and body["steps"] == 20 and body["bpd_images"] == 3
    ref, bf16 = body["engines"]["float32"], body["engines"]["bf16"]
    # the reference against itself: same outputs, same bits/dim, speed-up 1 at every batch
    assert ref["max_abs_d_eps"] == 0 and ref["bpd_rel_change"] == 0 and ref["max_abs_d_image_bpd"] == 0
    assert ref["speedup"] == {"1": 1.0, "4": 1.0} and ref["meets"]["bpd_rel_change"] is True
    assert ref["meets"]["speedup_batch1"] is False and ref["meets"]["speedup_batch64"] is None  # no batch 64 here
    # bf16 changes the outputs a little, and the bound by a fraction of a percent on a random tiny net
    assert 0 < bf16["max_abs_d_eps"] < 0.1 and bf16["max_abs_d_v"] is not None
    assert 0 < abs(bf16["bpd_rel_change"]) < 0.05 and bf16["total_bpd"] > 0
    for rec in (ref, bf16):
        assert all(len(v) == 2 and min(v) > 0 for v in rec["image_steps_per_s"].values())
        assert rec["best_image_steps_per_s"]["4"] == max(rec["image_steps_per_s"]["4"])
    assert "no-such-engine" in body["unavailable"] and "meets" not in body["engines"]["no-such-engine"]
    assert body["meet_all_targets"] == [] and set(body["fastest_within_bpd_target"]) <= {"1", "4"}
    assert len(body["loadavg_1min_per_measurement"]) == 2 * 2 * 2  # rounds × batches × engines


def test_with_engine_is_a_view(tiny_prior):
    """The engine view shares weights and digest and leaves the prior's own network alone."""
    tiny_prior.digest = "cd" * 32
    view = with_engine(tiny_prior, "bf16-channels-last")
    assert view.digest == tiny_prior.digest and view.net.engine is Engine.BF16_CHANNELS_LAST
    assert with_engine(tiny_prior, Engine.FLOAT32) is tiny_prior
    assert all(p.is_contiguous() for p in tiny_prior.net.parameters())  # the channels-last copy is the view's
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 17.0])
    with torch.inference_mode():
        out, ref = view.net(x, t), tiny_prior.net(x, t)
    assert out.dtype == torch.float32 and out.shape == ref.shape and (out - ref).abs().max() < 0.1
    with pytest.raises(ValueError, match="unknown engine 'fp8'"):
        with_engine(tiny_prior, "fp8")
