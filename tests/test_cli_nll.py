import json

import numpy as np
import pytest
from click.testing import CliRunner

from diffcodec.checkpoint import load_prior, save_prior
from diffcodec.likelihood import evaluate_nll
from diffcodec_cli.main import main

from .conftest import make_tiny_prior, random_images


pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def files(tmp_path):
    prior = tmp_path / "p.safetensors"
    digest = save_prior(make_tiny_prior(), prior)
    data = tmp_path / "x.npy"
    np.save(data, random_images(5).numpy())
    return prior, data, digest


def test_json_carries_every_field(files):
    prior, data, digest = files
    result = run("nll", "--prior", prior, "--data", data, "--steps", 8, "--json", "--device", "cpu", "--seed", 3)
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)
    for key in ("total_bpd", "total_bpd_stderr", "prior_bpd", "decoder_bpd", "num_images", "prior_digest", "steps"):
        assert key in rec and rec[key] is not None, key
    assert rec["prior_digest"] == digest and rec["num_images"] == 5 and rec["estimator"] == "exact"
    steps = rec["steps"]
    assert len(steps) == 8 and steps[0]["t"] == 20 and steps[-1]["t"] == 1
    assert all(a["t"] > b["t"] for a, b in zip(steps, steps[1:]))  # noisiest first
    for s in steps:
        assert set(s) >= {"t", "term_bpd", "cum_rate_bpd", "rmse"} and all(isinstance(s[k], float) for k in ("term_bpd", "cum_rate_bpd", "rmse"))
    assert rec["total_bpd"] == pytest.approx(rec["prior_bpd"] + sum(s["term_bpd"] for s in steps), rel=1e-12)
    assert steps[-1]["cum_rate_bpd"] + rec["decoder_bpd"] == pytest.approx(rec["total_bpd"], rel=1e-12)
    # The command is one library call: same figures as evaluate_nll with the same arguments.
    lib = evaluate_nll(load_prior(prior), np.load(data), load_prior(prior).schedule(8, "front"), seed=3, engine="auto")
    assert rec["total_bpd"] == pytest.approx(lib.total_bpd, rel=1e-12)
    assert rec["total_bpd_stderr"] == pytest.approx(lib.total_bpd_stderr, rel=1e-12)


def test_mc_json_and_human_table(files):
    prior, data, _ = files
    result = run("nll", "--prior", prior, "--data", data, "--estimator", "mc", "--samples", 4, "--json", "--limit", 3)
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)
    assert rec["estimator"] == "mc" and rec["samples"] == 4 and rec["num_images"] == 3 and rec["mc_stderr_bpd"] > 0
    assert sum(s["evaluations"] for s in rec["steps"]) == 3 * 5
    human = run("nll", "--prior", prior, "--data", data, "--steps", 5)
    assert human.exit_code == 0
    assert "bits/dim" in human.stdout and "decoder" in human.stdout and "RMSE" in human.stdout


def test_plot_is_written(files, tmp_path):
    pytest.importorskip("matplotlib")
    prior, data, _ = files
    out = tmp_path / "nll.png"
    result = run("nll", "--prior", prior, "--data", data, "--steps", 6, "--plot", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--steps", 500], "number of steps must be in 1..20"),
        (["--steps", 0], "'--steps': 0 is not in the range x>=1"),
        (["--estimator", "mc", "--samples", 0], "'--samples': 0 is not in the range x>=1"),
        (["--limit", 0], "'--limit': 0 is not in the range x>=1"),
        (["--batch", 0], "batch"),
    ],
)
def test_bad_flags_give_one_line_errors(files, extra, match):
    prior, data, _ = files
    result = run("nll", "--prior", prior, "--data", data, *extra)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], result.output


def test_bad_inputs_give_one_line_errors(files, tmp_path):
    prior, data, _ = files
    rgb, big = tmp_path / "rgb.npy", tmp_path / "big.npy"
    np.save(rgb, random_images(2, channels=3).numpy())
    np.save(big, random_images(2, size=16).numpy())
    cases = [
        (["--prior", tmp_path / "missing.safetensors", "--data", data], "prior file not found"),
        (["--prior", prior, "--data", tmp_path / "nothing.npy"], "no such file"),
        (["--prior", prior, "--data", rgb], "rgb.npy: RGB (3 channels) images, but the prior codes grayscale"),
        (["--prior", prior, "--data", big], "big.npy: images are 16x16, the prior expects 8x8"),
    ]
    for args, match in cases:
        result = run("nll", *args)
        assert result.exit_code != 0
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], result.output


def test_nll_is_listed_in_help():
    result = run("--help")
    assert result.exit_code == 0 and "nll" in result.output


def test_default_estimator_says_what_it_computes(files):
    """`--estimator auto` (the default) runs MC when K > 4(S + 1) and says so, exact otherwise."""
    prior, data, _ = files
    mc = CliRunner().invoke(main, ["nll", "--prior", str(prior), "--data", str(data), "--samples", "2"])
    assert mc.exit_code == 0, mc.output
    assert "Monte Carlo over steps, 2 per image (auto; --estimator exact for every step)" in mc.output
    assert "5 images, 20 steps" in mc.output and ": 15 network evaluations" in mc.output  # 5 × (2 + 1), said up front
    exact = run("nll", "--prior", prior, "--data", data, "--json")
    assert json.loads(exact.stdout)["estimator"] == "exact" and json.loads(exact.stdout)["estimator_requested"] == "auto"
