import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from diffcodec.checkpoint import save_prior
from diffcodec_cli.main import main

from .conftest import make_tiny_prior


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_the_commands():
    result = run("--help")
    assert result.exit_code == 0
    for name in ("sample", "info"):
        assert name in result.output


def test_sample_writes_a_grid(tmp_path):
    prior = tmp_path / "p.safetensors"
    save_prior(make_tiny_prior(channels=3), prior)
    out = tmp_path / "grid.png"
    result = run("sample", "--prior", prior, "-n", 4, "-o", out, "--steps", 5, "--device", "cpu")
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.size == (2 * 8 + 6, 2 * 8 + 6)
        assert np.asarray(im).std() > 0


def test_info_json_carries_digest_and_config(tmp_path):
    prior = tmp_path / "p.safetensors"
    digest = save_prior(make_tiny_prior(), prior)
    result = run("info", prior, "--json")
    assert result.exit_code == 0
    record = json.loads(result.output)
    assert record["digest"] == digest and record["config"]["num_timesteps"] == 20 and record["parameters"] > 0
    human = run("info", prior)
    assert digest in human.output and "parameters" in human.output


def test_bad_prior_gives_one_line_error(tmp_path):
    (tmp_path / "junk").write_text("junk")
    for path in (tmp_path / "junk", tmp_path / "missing.safetensors"):
        result = run("info", path)
        assert result.exit_code != 0
        assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
        assert "Traceback" not in result.output


def test_impossible_steps_flag(tmp_path):
    prior = tmp_path / "p.safetensors"
    save_prior(make_tiny_prior(), prior)
    result = run("sample", "--prior", prior, "-o", tmp_path / "g.png", "--steps", 500)
    assert result.exit_code != 0 and "number of steps must be in 1..20" in result.output
