"""`diffcodec compress` / `decompress` in-process (click's CliRunner) with a tiny prior."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from diffcodec.checkpoint import load_prior, save_prior
from diffcodec.images import read_image, write_image
from diffcodec_cli.main import main

from .conftest import make_tiny_prior, random_images

FAST = ["--steps", "4", "--threads", "1"]


@pytest.fixture
def setup(tmp_path):
    prior = make_tiny_prior()
    save_prior(prior, tmp_path / "p.safetensors")
    folder = tmp_path / "in"
    folder.mkdir()
    images = random_images(3, seed=5).numpy()
    for i, im in enumerate(images):
        write_image(folder / f"pic{i}.png", im)
    big = np.random.default_rng(0).integers(0, 256, (1, 11, 19), dtype=np.uint8)  # tiled: 2×3 tiles
    write_image(tmp_path / "big.png", big)
    return tmp_path, str(tmp_path / "p.safetensors"), folder, images, big


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_compress_decompress_round_trip_with_names(setup):
    tmp, prior, folder, images, _ = setup
    res = run("compress", folder, "-o", tmp / "x.dcl", "--prior", prior, *FAST, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    for key in ("bits_per_dim", "vlb_bits_per_dim", "vlb_stderr", "initial_bits", "overhead_percent", "coder_share"):
        assert key in report
    assert report["images"] == 3
    res = run("decompress", tmp / "x.dcl", "-o", tmp / "out", "--prior", prior)
    assert res.exit_code == 0, res.output
    for i, im in enumerate(images):
        assert np.array_equal(read_image(tmp / "out" / f"pic{i}.png"), im)


def test_large_image_is_tiled_and_npy_output(setup):
    tmp, prior, _, _, big = setup
    res = run("compress", tmp / "big.png", "-o", tmp / "b.dcl", "--prior", prior, *FAST, "--no-vlb")
    assert res.exit_code == 0, res.output
    assert ": 1 image, " in res.output
    res = run("decompress", tmp / "b.dcl", "-o", tmp / "o", "--prior", prior, "--npy")
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.load(tmp / "o" / "images.npy")[0], big)


def _assert_clean_error(res, what):
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and what in lines[0], res.output


def test_bad_inputs_give_one_line_errors(setup):
    tmp, prior, folder, _, _ = setup
    (tmp / "notes.txt").write_text("hello")
    rgb = tmp / "rgb.png"
    write_image(rgb, np.zeros((3, 8, 8), dtype=np.uint8))
    _assert_clean_error(run("compress", tmp / "missing.png", "-o", tmp / "m.dcl", "--prior", prior, *FAST), "no such file")
    _assert_clean_error(run("compress", tmp / "notes.txt", "-o", tmp / "m.dcl", "--prior", prior, *FAST), "not an image")
    _assert_clean_error(run("compress", rgb, "-o", tmp / "m.dcl", "--prior", prior, *FAST), "RGB")
    _assert_clean_error(run("compress", folder, "-o", tmp / "m.dcl", "--prior", prior, "--steps", "99"), "steps")
    assert not (tmp / "m.dcl").exists()


def test_bad_compressed_files_write_nothing(setup):
    tmp, prior, folder, _, _ = setup
    assert run("compress", folder, "-o", tmp / "x.dcl", "--prior", prior, *FAST, "--no-vlb").exit_code == 0
    blob = (tmp / "x.dcl").read_bytes()
    (tmp / "cut.dcl").write_bytes(blob[: len(blob) // 2])
    (tmp / "flip.dcl").write_bytes(blob[:-5] + bytes([blob[-5] ^ 16]) + blob[-4:])
    other = make_tiny_prior(seed=7)
    save_prior(other, tmp / "other.safetensors")
    cases = [
        (tmp / "cut.dcl", prior, "truncated"),
        (tmp / "flip.dcl", prior, "corrupted"),
        (tmp / "x.dcl", tmp / "other.safetensors", "another prior"),
        (tmp / "notes.dcl", prior, "no such file"),
    ]
    for path, p, what in cases:
        out = tmp / f"out-{path.stem}-{what[:3]}"
        res = run("decompress", path, "-o", out, "--prior", p)
        _assert_clean_error(res, what)
        assert not out.exists() or not any(out.iterdir())


def test_file_of_a_prior_not_embedded_needs_prior(setup):
    """Without --prior, a file whose prior is none of the embedded ones is refused by naming its digest,
    not checked against the Fashion-MNIST prior as if that were the file's."""
    tmp, prior, folder, _, _ = setup
    assert run("compress", folder, "-o", tmp / "x.dcl", "--prior", prior, *FAST, "--no-vlb").exit_code == 0
    assert run("encode", folder / "pic0.png", "-o", tmp / "x.dcp", "--prior", prior, "--steps", "4").exit_code == 0
    digest = load_prior(prior).digest
    for cmd, path, out in (("decompress", tmp / "x.dcl", tmp / "out"), ("decode", tmp / "x.dcp", tmp / "y.png")):
        res = run(cmd, path, "-o", out)
        _assert_clean_error(res, "not embedded")
        assert digest[:4] in res.output and "--prior" in res.output
        assert not out.exists()
