"""bench.inherit's arithmetic: speed-ups from best rounds, shares against the network at the command's batch."""

from __future__ import annotations

import argparse

import pytest

from bench import inherit


def _rows():
    net = {1: {"float32": [50, 40], "onnxruntime": [100, 90], "mixed": [95, 99]},
           64: {"float32": [100, 80], "onnxruntime": [150, 140], "mixed": [220, 200]}}
    rows = {f"network_{b}": {e: [{"image_steps_per_s": r} for r in rs] for e, rs in v.items()} for b, v in net.items()}
    secs = {"nll": {"float32": [20, 22], "onnxruntime": [16, 17], "mixed": [11, 12]},
            "compress": {"float32": [100], "onnxruntime": [80], "mixed": [60]},
            "encode": {"float32": [12, 13], "onnxruntime": [10, 9], "mixed": [10, 9.5]}}
    for cmd, per in secs.items():
        rows[cmd] = {e: [{"seconds": s, "network_seconds": s / 2} for s in ss] for e, ss in per.items()}
    for e in rows["encode"]:
        for r in rows["encode"][e]:
            r["search_seconds"] = 3.0
    return rows


def test_shares():
    args = argparse.Namespace(rounds=2, compress_rounds=1, nll_num=4, compress_num=8, encode_num=2)
    body = inherit.summarize(_rows(), {"decode_float32_exact": True}, args, 1.0, {})
    assert body["network"]["batch_64"]["mixed"]["speedup"] == pytest.approx(2.2)  # best rounds: 220 / 100
    assert body["network"]["batch_1"]["onnxruntime"]["speedup"] == pytest.approx(2.0)
    nll = body["commands"]["nll"]["engines"]["mixed"]
    assert nll["speedup"] == pytest.approx(20 / 11) and nll["share"] == pytest.approx(20 / 11 / 2.2)
    assert nll["meets_target"] is True  # 0.826
    compress = body["commands"]["compress"]["engines"]["mixed"]
    assert compress["share"] == pytest.approx((100 / 60) / 2.2) and compress["meets_target"] is False  # 0.758
    enc = body["commands"]["encode"]
    assert enc["network_batch"] == 1 and enc["engines"]["onnxruntime"]["share"] == pytest.approx((12 / 9) / 2.0)
    assert enc["engines"]["onnxruntime"]["search_fraction"] == pytest.approx(3 / 9)
    assert enc["engines"]["float32"]["share"] is None and enc["engines"]["float32"]["speedup"] == 1.0
    assert nll["in_command_network_speedup"] == pytest.approx(20 / 11)
    # round by round: nll's round 1 (20/11) against the network's round 1 (220/100), round 2 against round 2
    assert nll["share_per_round"] == pytest.approx([(20 / 11) / (220 / 100), (22 / 12) / (200 / 80)])
    assert nll["share_median_of_rounds"] == pytest.approx(((20 / 11) / 2.2 + (22 / 12) / 2.5) / 2)
