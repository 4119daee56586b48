"""--engine for compress/decompress and sample: the file records the engine, the decoder runs it, a
request for another one is refused in one line, and only engines shown deterministic may code."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from diffcodec import engines
from diffcodec.checkpoint import save_prior
from diffcodec.coding import container
from diffcodec.coding.lossless import CodecParams, compress, decompress
from diffcodec.coding.varint import encode_varint
from diffcodec.defaults import CODING_ENGINES, Engine
from diffcodec.engines import coding_engine
from diffcodec_cli.main import main

from .conftest import make_tiny_prior, random_images

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prior") / "p.safetensors"
    save_prior(make_tiny_prior(), path)
    return str(path)


@pytest.fixture(scope="module")
def prior(prior_file):
    from diffcodec.checkpoint import load_prior

    return load_prior(prior_file)


@pytest.fixture(scope="module")
def images():
    return random_images(5, seed=3).numpy()


@pytest.fixture(scope="module")
def files(prior, images):
    """One file per coding engine (4 steps, batches of at most 2)."""
    names = [f"e{i}.png" for i in range(len(images))]
    return {e: compress(prior, images, names, CodecParams(steps=4, max_batch=2, engine=e))[0] for e in CODING_ENGINES}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(res, *parts):
    assert res.exit_code != 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), res.output
    for part in parts:
        assert part in lines[0], lines[0]


@pytest.mark.parametrize("engine", CODING_ENGINES)
def test_round_trip_bit_exact_with_each_coding_engine(prior, images, files, engine):
    header, _ = container.unpack(files[engine])
    assert container.ENGINES[header.engine] is engine
    out, _, stats = decompress(prior, files[engine])
    assert np.array_equal(out, images) and stats.engine is engine


def test_onnxruntime_round_trip_on_two_threads(prior, images):
    blob, stats = compress(prior, images, ["a.png"] * 5, CodecParams(steps=3, threads=2, engine="onnxruntime"))
    header, _ = container.unpack(blob)
    assert (header.threads, stats.engine) == (2, Engine.ONNXRUNTIME)
    assert np.array_equal(decompress(prior, blob)[0], images)


def test_decoding_with_another_engine_is_refused(prior, images, files):
    for made, other in [(Engine.FLOAT32, Engine.ONNXRUNTIME), (Engine.ONNXRUNTIME, Engine.FLOAT32)]:
        with pytest.raises(ValueError, match=f"made with engine {made.value}; decoding it with engine {other.value}"):
            decompress(prior, files[made], engine=other)
        assert np.array_equal(decompress(prior, files[made], engine=made)[0], images)
        assert np.array_equal(decompress(prior, files[made], engine="auto")[0], images)  # auto follows the file
    with pytest.raises(ValueError, match="unknown engine 'int4'"):
        decompress(prior, files[Engine.FLOAT32], engine="int4")


def test_engines_are_not_interchangeable_behind_the_decoders_back(prior, images, files):
    """The ONNX Runtime file relabelled float32 (CRC recomputed): the decoder either still gets the
    images exactly (the two networks agree within the coder's 2^-20 grid on this tiny prior) or says
    it desynchronized; never other images."""
    blob = bytearray(files[Engine.ONNXRUNTIME])
    at = engine_byte(bytes(blob))
    assert blob[at] == 1
    blob[at] = 0
    try:
        out, _, _ = decompress(prior, with_crc(bytes(blob)))
    except ValueError as err:
        assert "desynchronized" in str(err) and "\n" not in str(err)
    else:
        assert np.array_equal(out, images)


def engine_byte(blob: bytes) -> int:
    """Offset of the engine varint in a version 4 file (after magic, version, digest and the 11 varints before it)."""
    header, _ = container.unpack(blob)
    before = b"".join(encode_varint(getattr(header, f)) for f in container._VARINT_FIELDS[:-1])
    return 4 + container.DIGEST_BYTES + len(before)


def with_crc(body: bytes) -> bytes:
    return body[:-4] + struct.pack("<I", zlib.crc32(body[:-4]))


def test_corrupted_engine_field_gives_one_line_errors(files, tmp_path):
    blob = bytearray(files[Engine.FLOAT32])
    bad = len(CODING_ENGINES)  # a code no engine has
    blob[engine_byte(bytes(blob))] = bad
    with pytest.raises(ValueError, match="checksum mismatch"):
        container.unpack(bytes(blob))
    with pytest.raises(ValueError, match=rf"header field engine = {bad} is outside 0\.\.{bad - 1}"):
        container.unpack(with_crc(bytes(blob)))
    (tmp_path / "x.dcl").write_bytes(with_crc(bytes(blob)))
    one_line_error(run("decompress", tmp_path / "x.dcl", "-o", tmp_path / "out"), f"engine = {bad}")  # before any prior


def test_version_3_files_decode_as_float32(prior, images, files):
    """A version 3 file is a version 4 float32 file without the engine field."""
    blob = files[Engine.FLOAT32]
    at = engine_byte(blob)
    v3 = with_crc(blob[:3] + bytes([3]) + blob[4:at] + blob[at + 1 :])
    header, _ = container.unpack(v3)
    assert header.engine == 0
    out, _, stats = decompress(prior, v3)
    assert np.array_equal(out, images) and stats.engine is Engine.FLOAT32
    with pytest.raises(ValueError, match="unsupported diffcodec file version 2 .*reads versions 3, 4"):
        container.unpack(with_crc(blob[:3] + bytes([2]) + blob[4:]))


def test_only_deterministic_engines_code(prior, monkeypatch):
    for name in ("bf16", "compile", "channels-last", "bf16-channels-last", "compile-bf16"):
        with pytest.raises(ValueError, match=f"engine {name} cannot code"):
            CodecParams(steps=4, engine=name).resolved(prior)
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: True)
    assert coding_engine("auto", "cpu") is Engine.MIXED  # onnxruntime installed by the test extra
    assert coding_engine("auto", "cuda") is Engine.FLOAT32
    for name in ("onnxruntime", "mixed"):
        with pytest.raises(ValueError, match="runs on the CPU"):
            coding_engine(name, "cuda")
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: False)
    assert coding_engine("auto", "cpu") is Engine.ONNXRUNTIME
    monkeypatch.setattr(engines, "onnxruntime_available", lambda: False)
    assert coding_engine("auto", "cpu") is Engine.FLOAT32
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: True)
    assert coding_engine("auto", "cpu") is Engine.FLOAT32  # mixed codes its float32 part through ONNX Runtime
    for name in ("onnxruntime", "mixed"):
        with pytest.raises(ValueError, match=r"pip install 'diffcodec\[fast\]'"):
            coding_engine(name)


def test_file_whose_engine_is_not_installed_names_the_packages(prior, files, monkeypatch):
    monkeypatch.setattr(engines, "onnxruntime_available", lambda: False)
    with pytest.raises(ValueError, match=r"made with engine onnxruntime, which cannot run here: .*onnxruntime and "
                                         r"onnx packages: pip install 'diffcodec\[fast\]'"):
        decompress(prior, files[Engine.ONNXRUNTIME])


@pytest.fixture
def saved(prior_file, images, tmp_path):
    np.save(tmp_path / "x.npy", images)
    return tmp_path, prior_file


def test_cli_engine(saved, images):
    tmp, p = saved
    for cmd in ("compress", "decompress", "sample"):
        assert "--engine" in run(cmd, "--help").output
    res = run("compress", tmp / "x.npy", "-o", tmp / "a.dcl", "--prior", p, "--steps", 3, "--no-vlb", "--json")
    assert res.exit_code == 0, res.output
    auto = coding_engine("auto", "cpu").value  # mixed on a CPU with bf16 units, else onnxruntime (installed)
    assert json.loads(res.stdout)["engine"] == auto
    one_line_error(run("decompress", tmp / "a.dcl", "-o", tmp / "o", "--prior", p, "--engine", "float32"),
                   f"engine {auto}", "engine float32")
    res = run("decompress", tmp / "a.dcl", "-o", tmp / "o", "--prior", p, "--npy", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["engine"] == auto
    assert np.array_equal(np.load(tmp / "o" / "images.npy"), images)
    one_line_error(run("compress", tmp / "x.npy", "-o", tmp / "b.dcl", "--prior", p, "--steps", 3, "--engine", "bf16"),
                   "engine bf16 cannot code")
    res = run("sample", "--prior", p, "-n", 2, "--steps", 3, "-o", tmp / "s.png", "--engine", "onnxruntime")
    assert res.exit_code == 0 and "engine onnxruntime" in res.output, res.output


def test_commands_export_the_network_once(saved, images, monkeypatch):
    """One ONNX export for compress (its coder and its VLB share the view), none for the commands after
    it: they read the graph that the first one kept (engines.onnx_graph)."""
    tmp, p = saved
    monkeypatch.setenv(engines.ONNX_CACHE_ENV, str(tmp / "onnx-cache"))
    exports = []
    real_export = engines.export_onnx
    monkeypatch.setattr(engines, "export_onnx", lambda *a: exports.append(1) or real_export(*a))
    res = run("compress", tmp / "x.npy", "-o", tmp / "e.dcl", "--prior", p, "--steps", 3, "--engine", "onnxruntime", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["vlb_bits_per_dim"] > 0, res.output
    assert len(exports) == 1
    res = run("decompress", tmp / "e.dcl", "-o", tmp / "eo", "--prior", p, "--npy")
    assert res.exit_code == 0 and np.array_equal(np.load(tmp / "eo" / "images.npy"), images), res.output
    res = run("compress", tmp / "x.npy", "-o", tmp / "e2.dcl", "--prior", p, "--steps", 3, "--engine", "mixed", "--no-vlb")
    assert res.exit_code == 0, res.output
    assert len(exports) == 1

def test_onnxruntime_file_decodes_in_a_fresh_process(saved, images):
    """The encoder's ONNX Runtime outputs are recomputed bit for bit by another process (its own export
    and session), at the file's thread count."""
    tmp, p = saved
    res = run("compress", tmp / "x.npy", "-o", tmp / "f.dcl", "--prior", p, "--steps", 4, "--threads", 2,
              "--engine", "onnxruntime", "--no-vlb")
    assert res.exit_code == 0, res.output
    code = "from diffcodec_cli.main import main; main()"
    out = subprocess.run([sys.executable, "-c", code, "decompress", str(tmp / "f.dcl"), "-o", str(tmp / "fo"), "--prior", p,
                          "--npy"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert np.array_equal(np.load(tmp / "fo" / "images.npy"), images)


@pytest.fixture(scope="module")
def mixed_file(prior, tmp_path_factory):
    """24 images in batches of up to 16 tiles: the bf16 part of the mixed engine runs (8 or more inputs
    above t = T/100 in a call)."""
    pytest.importorskip("onnxruntime")
    images = random_images(24, seed=5).numpy()
    params = CodecParams(steps=4, max_batch=16, engine="mixed")
    return images, compress(prior, images, [f"m{i}.png" for i in range(24)], params)[0]


def test_mixed_round_trip_runs_bf16_and_is_exact(prior, mixed_file):
    images, blob = mixed_file
    header, _ = container.unpack(blob)
    assert container.ENGINES[header.engine] is Engine.MIXED
    ort = compress(prior, images, [f"m{i}.png" for i in range(24)], CodecParams(steps=4, max_batch=16, engine="onnxruntime"))[0]
    assert not np.array_equal(container.unpack(ort)[1], container.unpack(blob)[1])  # bf16 moved the chain: it ran
    out, _, stats = decompress(prior, blob)
    assert np.array_equal(out, images) and stats.engine is Engine.MIXED
    with pytest.raises(ValueError, match="made with engine mixed; decoding it with engine onnxruntime"):
        decompress(prior, blob, engine="onnxruntime")


def test_mixed_file_decodes_in_a_fresh_process_on_two_threads(prior_file, mixed_file, tmp_path):
    """bf16 autocast's outputs are recomputed bit for bit by another process at another thread count
    than the test process's (the file records 1 thread; the decoder pins it)."""
    images, blob = mixed_file
    (tmp_path / "m.dcl").write_bytes(blob)
    code = "import torch; torch.set_num_threads(2); from diffcodec_cli.main import main; main()"
    out = subprocess.run([sys.executable, "-c", code, "decompress", str(tmp_path / "m.dcl"), "-o", str(tmp_path / "mo"),
                          "--prior", prior_file, "--npy"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert np.array_equal(np.load(tmp_path / "mo" / "images.npy"), images)
