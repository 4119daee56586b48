"""--engine for nll: the engine is resolved per device, recorded in the result, and moves the bound
only by round-off; float32 is exactly today's figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from diffcodec.checkpoint import save_prior
from diffcodec.defaults import AUTO_ENGINE, Engine
from diffcodec import engines
from diffcodec.engines import resolve_engine
from diffcodec.likelihood import evaluate_nll
from diffcodec_cli.main import main

from .conftest import make_tiny_prior, random_images

pytestmark = pytest.mark.usefixtures("one_thread")


def test_resolve_engine(monkeypatch):
    assert AUTO_ENGINE["cpu"] is Engine.MIXED
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: True)
    assert resolve_engine("auto", "cpu") is Engine.MIXED
    assert resolve_engine("auto", "cuda") is Engine.FLOAT32
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: False)  # bf16 emulated: not measured to pay
    assert resolve_engine("auto", "cpu") is Engine.ONNXRUNTIME  # installed by the test extra
    monkeypatch.setattr(engines, "onnxruntime_available", lambda: False)
    assert resolve_engine("auto", "cpu") is Engine.FLOAT32
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: True)
    assert resolve_engine("auto", "cpu") is Engine.MIXED  # its float32 part then runs eagerly
    assert resolve_engine(Engine.AUTO, "meta") is Engine.FLOAT32  # a device type never measured
    assert resolve_engine("bf16", "cpu") is Engine.BF16
    with pytest.raises(ValueError, match="unknown engine 'int4'"):
        resolve_engine("int4")


def test_nll_engine_moves_the_bound_by_round_off_only(tiny_prior):
    images = random_images(4).numpy()
    schedule = tiny_prior.schedule(10, "front")
    ref = evaluate_nll(tiny_prior, images, schedule, workers=2)
    assert ref.engine is Engine.FLOAT32 and ref.to_dict()["engine"] == "float32"
    fast = evaluate_nll(tiny_prior, images, schedule, workers=2, engine="bf16")
    assert fast.engine is Engine.BF16
    assert fast.total_bpd == pytest.approx(ref.total_bpd, rel=2e-3) and fast.total_bpd != ref.total_bpd
    again = evaluate_nll(tiny_prior, images, schedule, workers=1, engine=Engine.FLOAT32)
    np.testing.assert_array_equal(again.image_bpd, ref.image_bpd)  # the prior itself was left alone
    # ONNX Runtime: float32 too, so the bound moves by float32 round-off only (measured 1e-11 on the
    # embedded prior); the two workers share its session
    ort = evaluate_nll(tiny_prior, images, schedule, workers=2, engine="onnxruntime")
    assert ort.engine is Engine.ONNXRUNTIME
    np.testing.assert_allclose(ort.image_bpd, ref.image_bpd, rtol=1e-6)


@pytest.mark.parametrize("ort", [True, False])
def test_mixed_engine_splits_a_call_by_timestep(tiny_prior, monkeypatch, ort):
    """Inputs above t = T/100 run under bf16 autocast, the rest (and calls with fewer than 8 such
    inputs) in float32, each output in its input's place."""
    if not ort:
        monkeypatch.setattr(engines, "onnxruntime_available", lambda: False)
    net = tiny_prior.net
    mixed = engines.MixedNet(net, tiny_prior.image_shape, float32_upto=3)
    assert isinstance(mixed.exact, engines.OnnxRuntimeNet) == ort and (mixed.exact is net) == (not ort)
    bf16 = engines.EngineNet(net, Engine.BF16)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 1, 8, 8, generator=gen)
    t = torch.tensor([1, 9, 2, 15, 3, 4, 12, 20, 5, 6, 7, 8], dtype=torch.float32)  # 3 at t <= 3, 9 above
    with torch.no_grad():
        out = mixed(x, t)
        low, high = t <= 3, t > 3
        torch.testing.assert_close(out[high], bf16(x[high], t[high]), rtol=0, atol=0)
        torch.testing.assert_close(out[low], net(x[low], t[low]), rtol=1e-5, atol=1e-5)
        assert not torch.equal(bf16(x[low], t[low]), net(x[low], t[low]))  # the split is visible
        few = mixed(x[:6], t[:6])  # 3 inputs above the cut: too few for bf16, all float32
        torch.testing.assert_close(few, net(x[:6], t[:6]), rtol=1e-5, atol=1e-5)
    assert engines.mixed_float32_upto(1000) == 10 and engines.mixed_float32_upto(20) == 1


def test_nll_mixed_engine(tiny_prior):
    images = random_images(4).numpy()
    schedule = tiny_prior.schedule(10, "front")
    ref = evaluate_nll(tiny_prior, images, schedule, workers=1)
    mixed = evaluate_nll(tiny_prior, images, schedule, workers=1, engine="mixed")
    assert mixed.engine is Engine.MIXED and mixed.to_dict()["engine"] == "mixed"
    assert mixed.total_bpd == pytest.approx(ref.total_bpd, rel=2e-3)
    # the decoder term (t = 1, float32 under mixed) agrees to float32 round-off; bf16 moves it
    np.testing.assert_allclose(mixed.term_bpd[0], ref.term_bpd[0], rtol=1e-5)


def test_cli_engine(tmp_path):
    prior, data = tmp_path / "p.safetensors", tmp_path / "x.npy"
    save_prior(make_tiny_prior(), prior)
    np.save(data, random_images(3).numpy())

    def run(*args):
        return CliRunner().invoke(main, ["nll", "--prior", str(prior), "--data", str(data), "--steps", "6", *args],
                                  catch_exceptions=False)

    recs = {e: json.loads(run("--json", "--engine", e).stdout) for e in ("float32", "bf16", "auto")}
    assert recs["bf16"]["engine"] == "bf16" and recs["float32"]["engine_requested"] == "float32"
    assert recs["auto"]["engine"] == resolve_engine("auto", "cpu").value  # mixed where the CPU has bf16 units
    assert recs["auto"]["engine_requested"] == "auto"
    assert recs["auto"]["total_bpd"] == pytest.approx(recs["float32"]["total_bpd"], rel=2e-3)
    assert recs["bf16"]["total_bpd"] == pytest.approx(recs["float32"]["total_bpd"], rel=2e-3)
    human = run("--engine", "bf16")
    assert human.exit_code == 0 and "engine    bf16" in human.stdout
    bad = run("--engine", "fp8")
    assert bad.exit_code != 0 and "fp8" in bad.output and len(bad.output.strip().splitlines()) == 1


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("engine", ["float32", "bf16", "channels-last"])
def test_cuda_engines_run_and_stay_near_float32(engine):
    """On a GPU the same switch selects autocast / channels-last; outputs stay near float32 eager and
    the lossless coder round-trips there (float32, the coding engine on CUDA)."""
    import torch

    from diffcodec.coding.lossless import CodecParams, compress, decompress
    from diffcodec.engines import with_engine

    prior = make_tiny_prior().cuda()
    prior.digest = "ab" * 32
    x = torch.randn(4, *prior.image_shape, device="cuda")
    t = torch.full((4,), 5.0, device="cuda")
    with torch.no_grad():
        ref = torch.cat([o for o in prior.network(x, t) if o is not None], 1)
        got = torch.cat([o for o in with_engine(prior, engine).network(x, t) if o is not None], 1)
    assert torch.isfinite(got).all() and (got - ref).abs().max() < (0.1 if "bf16" in engine else 1e-3)
    images = random_images(3).numpy()
    blob, _ = compress(prior, images, ["a.png", "b.png", "c.png"], CodecParams(steps=4))
    assert np.array_equal(decompress(prior, blob)[0], images)


def _ort_out(prior, x, t):
    with torch.no_grad():
        return prior.net(x, t)


@pytest.mark.skipif(not engines.onnxruntime_available(), reason="needs onnxruntime")
def test_onnx_graph_cache(tmp_path, monkeypatch):
    """A loaded prior's exported graph is kept on disk and read back by the next command: the same
    outputs as a fresh export; a damaged file, a prior whose weights moved away from its digest,
    ``off`` and cache=False all export anew (or write nothing)."""
    from diffcodec.checkpoint import load_prior

    folder = tmp_path / "cache"
    monkeypatch.setenv(engines.ONNX_CACHE_ENV, str(folder))
    save_prior(make_tiny_prior(), tmp_path / "p.safetensors")
    prior = load_prior(tmp_path / "p.safetensors")
    x, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([1.0, 7.0, 19.0])
    fresh = _ort_out(engines.with_engine(prior, "onnxruntime"), x, t)
    assert not folder.exists()  # cache=False (the default): nothing kept
    exports = []
    real_export = engines.export_onnx
    monkeypatch.setattr(engines, "export_onnx", lambda *a: exports.append(1) or real_export(*a))
    first = _ort_out(engines.with_engine(prior, "onnxruntime", cache=True), x, t)
    files = list(folder.glob("*.onnx"))
    assert len(exports) == 1 and len(files) == 1
    assert files[0].read_bytes()[32:] == real_export(prior.net, prior.image_shape, prior.any_size)
    cached = _ort_out(engines.with_engine(prior, "mixed", cache=True), x, t)  # its float32 part: the same graph
    again = _ort_out(engines.with_engine(prior, "onnxruntime", cache=True), x, t)
    assert len(exports) == 1

    def read_only(*a):
        raise PermissionError("read-only file system")

    with monkeypatch.context() as m:  # a cache it cannot touch is still read
        m.setattr(engines.os, "utime", read_only)
        engines.with_engine(prior, "onnxruntime", cache=True)
    assert len(exports) == 1
    torch.testing.assert_close(first, fresh, rtol=0, atol=0)
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)
    torch.testing.assert_close(cached[t <= 1], fresh[t <= 1], rtol=0, atol=0)
    data = bytearray(files[0].read_bytes())  # a damaged file is not trusted: exported and written anew
    data[len(data) // 2] ^= 1
    files[0].write_bytes(bytes(data))
    torch.testing.assert_close(_ort_out(engines.with_engine(prior, "onnxruntime", cache=True), x, t), fresh, rtol=0, atol=0)
    assert len(exports) == 2 and files[0].read_bytes()[32:] == real_export(prior.net, prior.image_shape, prior.any_size)
    monkeypatch.setenv(engines.ONNX_CACHE_ENV, "off")
    engines.with_engine(prior, "onnxruntime", cache=True)
    assert len(exports) == 3
    monkeypatch.setenv(engines.ONNX_CACHE_ENV, str(folder))
    with torch.no_grad():  # weights no longer those of the digest (a trainer's prior): not cached
        next(prior.net.parameters()).add_(1e-3)
    engines.with_engine(prior, "onnxruntime", cache=True)
    assert len(exports) == 4 and len(list(folder.glob("*.onnx"))) == 1


@pytest.mark.skipif(not engines.onnxruntime_available(), reason="needs onnxruntime")
def test_onnx_export_is_the_same_in_another_process(tmp_path):
    """What makes the cache safe: a fresh process exports the same bytes for the same network."""
    import subprocess
    import sys

    save_prior(make_tiny_prior(), tmp_path / "p.safetensors")
    code = ("import sys; from diffcodec.checkpoint import load_prior; from diffcodec.engines import export_onnx; "
            "p = load_prior(sys.argv[1]); sys.stdout.buffer.write(export_onnx(p.net, p.image_shape, p.any_size))")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.safetensors")], capture_output=True, check=True).stdout
    from diffcodec.checkpoint import load_prior

    prior = load_prior(tmp_path / "p.safetensors")
    assert other == engines.export_onnx(prior.net, prior.image_shape, prior.any_size)
