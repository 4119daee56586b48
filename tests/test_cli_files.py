"""What the commands write, and where: no lost or overwritten image, output paths checked before the
work, ordinary permissions, small sets reported sensibly, one error style, a fast --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from diffcodec.checkpoint import save_prior
from diffcodec.files import umask
from diffcodec.images import read_image, write_image
from diffcodec_cli.main import COMMANDS, main

from .conftest import make_tiny_prior, random_images

FAST = ["--steps", "3", "--threads", "1"]
pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(res, what: str) -> str:
    assert res.exit_code != 0, res.output
    lines = [line for line in res.output.splitlines() if line.strip() and "tile-step" not in line]  # bars clear themselves
    assert len(lines) == 1 and lines[0].startswith("Error:") and what in lines[0], res.output
    return lines[0]


@pytest.fixture
def prior_file(tmp_path):
    path = tmp_path / "p.safetensors"
    save_prior(make_tiny_prior(), path)
    return path


def _pngs(folder, names, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    images = random_images(len(names), seed=seed).numpy()
    for name, image in zip(names, images):
        write_image(folder / name, image)
    return images


def test_colliding_names_decode_to_separate_files(tmp_path, prior_file):
    """`a` and `a.png` (and the same name in two folders) used to decode to one file, the others lost."""
    a = _pngs(tmp_path / "x", ["a", "a.png", "p.png"], seed=1)
    b = _pngs(tmp_path / "y", ["p.png"], seed=2)
    res = run("compress", tmp_path / "x" / "a", tmp_path / "x" / "a.png", tmp_path / "x" / "p.png",
              tmp_path / "y" / "p.png", "-o", tmp_path / "c.dcl", "--prior", prior_file, *FAST, "--no-vlb", "--json")
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["renamed"] == [["a", "a-2.png"], ["p.png", "p-2.png"]]
    res = run("decompress", tmp_path / "c.dcl", "-o", tmp_path / "out", "--prior", prior_file)
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path / "out")) == ["a-2.png", "a.png", "p-2.png", "p.png"]
    expected = {"a-2.png": a[0], "a.png": a[1], "p.png": a[2], "p-2.png": b[0]}
    for name, image in expected.items():
        assert np.array_equal(read_image(tmp_path / "out" / name), image), name


def test_decompress_refuses_to_overwrite_before_any_work(tmp_path, prior_file):
    _pngs(tmp_path / "in", ["a.png", "b.png"])
    assert run("compress", tmp_path / "in", "-o", tmp_path / "c.dcl", "--prior", prior_file, *FAST, "--no-vlb").exit_code == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"mine")
    # The check comes before the prior is even loaded: a missing prior is not what fails here.
    res = run("decompress", tmp_path / "c.dcl", "-o", out, "--prior", tmp_path / "missing.safetensors")
    one_line_error(res, "b.png already exist(s); pass --force to overwrite")
    assert sorted(os.listdir(out)) == ["b.png"] and (out / "b.png").read_bytes() == b"mine"
    res = run("decompress", tmp_path / "c.dcl", "-o", out, "--prior", prior_file, "--force")
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(out)) == ["a.png", "b.png"] and (out / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failure_part_way_leaves_no_partial_folder(tmp_path, prior_file, monkeypatch):
    _pngs(tmp_path / "in", ["a.png", "b.png", "c.png"])
    assert run("compress", tmp_path / "in", "-o", tmp_path / "c.dcl", "--prior", prior_file, *FAST, "--no-vlb").exit_code == 0
    import diffcodec.images

    real, calls = diffcodec.images.write_image, []

    def fail_on_third(path, image):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(36, "File name too long")
        real(path, image)

    monkeypatch.setattr(diffcodec.images, "write_image", fail_on_third)
    one_line_error(run("decompress", tmp_path / "c.dcl", "-o", tmp_path / "new" / "out", "--prior", prior_file), "new/out")
    assert not (tmp_path / "new" / "out").exists() and os.listdir(tmp_path / "new") == []
    existing = tmp_path / "old"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    calls.clear()
    one_line_error(run("decompress", tmp_path / "c.dcl", "-o", existing, "--prior", prior_file), "cannot write")
    assert os.listdir(existing) == ["keep.txt"]  # no PNG and no temporary folder left behind


def test_output_paths_are_checked_before_the_work(tmp_path, prior_file):
    """A missing or unwritable -o fails at once (before the prior loads), naming the user's path."""
    _pngs(tmp_path / "in", ["a.png"])
    missing = tmp_path / "nowhere" / "x.dcl"
    no_prior = tmp_path / "missing.safetensors"
    one_line_error(run("compress", tmp_path / "in", "-o", missing, "--prior", no_prior), f"{missing}: folder")
    one_line_error(run("compress", tmp_path / "in", "-o", tmp_path / "in", "--prior", no_prior), "is a directory")
    one_line_error(run("sample", "-o", missing, "--prior", no_prior), f"{missing}: folder")
    one_line_error(run("nll", "--data", tmp_path / "in", "--plot", missing, "--prior", no_prior), f"{missing}: folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        probe = locked / "probe"
        try:
            probe.write_bytes(b"")  # root writes anywhere: use a read-only file system instead
            probe.unlink()
            target = "/proc/x.dcl"
        except PermissionError:
            target = str(locked / "x.dcl")
        one_line_error(run("compress", tmp_path / "in", "-o", target, "--prior", no_prior), f"{target}: cannot write in folder")
        one_line_error(run("decompress", tmp_path / "none.dcl", "-o", tmp_path / "o", "--prior", no_prior), "no such file")
    finally:
        locked.chmod(0o755)


def test_written_files_get_ordinary_permissions(tmp_path, prior_file):
    _pngs(tmp_path / "in", ["a.png", "b.png"])
    old = os.umask(0o022)
    try:
        assert run("compress", tmp_path / "in", "-o", tmp_path / "c.dcl", "--prior", prior_file, *FAST, "--no-vlb").exit_code == 0
        assert run("decompress", tmp_path / "c.dcl", "-o", tmp_path / "out", "--prior", prior_file).exit_code == 0
        assert umask() == 0o022
    finally:
        os.umask(old)
    assert (tmp_path / "c.dcl").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "a.png").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("count", [1, 3])
def test_small_sets_read_sensibly(tmp_path, prior_file, count):
    """One image: no nan, no '100 % coder share', no chain; few images: fixed costs in bytes, the
    chain's overhead apart from them."""
    _pngs(tmp_path / "in", [f"i{k:02d}.png" for k in range(count)])
    res = run("compress", tmp_path / "in", "-o", tmp_path / "c.dcl", "--prior", prior_file, *FAST, "--json")
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)  # strict JSON: no NaN
    assert rec["fixed_bytes"] == rec["header_bytes"] + rec["initial_bytes"] and rec["header_bytes"] > 0
    assert rec["chain_tiles"] == count - rec["bootstrap_tiles"] and rec["bootstrap_tiles"] >= 1
    human = run("compress", tmp_path / "in", "-o", tmp_path / "c.dcl", "--prior", prior_file, *FAST).output
    assert "nan" not in human.lower() and "fixed costs" in human
    if count == 1:
        assert rec["coder_share"] is None and rec["vlb_stderr"] is None
    if rec["chain_tiles"] == 0:
        assert rec["chain_overhead_percent"] is None and "chain        none" in human
    else:
        assert rec["chain_bytes"] > 0 and rec["chain_overhead_percent"] is not None
        assert "vs their VLB" in human and "coder" in human
    if count == 3:
        assert rec["chain_tiles"] > 0


@pytest.mark.parametrize("command", [
    ["compress", "IN", "-o", "OUT"],
    ["nll", "--data", "IN"],
    ["sample", "-o", "OUT"],
])
def test_steps_zero_gives_the_same_one_line_error_everywhere(tmp_path, command):
    args = [str(tmp_path / "x.png") if a == "IN" else str(tmp_path / "o.dcl") if a == "OUT" else a for a in command]
    one_line_error(run(*args, "--steps", "0"), "Invalid value for '--steps': 0 is not in the range x>=1")


def test_colour_inputs_are_refused_naming_the_file(tmp_path, prior_file):
    _pngs(tmp_path / "in", ["gray.png"])
    write_image(tmp_path / "in" / "colour.png", np.zeros((3, 8, 8), dtype=np.uint8))
    line = one_line_error(run("compress", tmp_path / "in" / "colour.png", "-o", tmp_path / "c.dcl", "--prior", prior_file), "RGB")
    assert "colour.png" in line
    np.save(tmp_path / "rgb.npy", np.zeros((2, 8, 8, 3), dtype=np.uint8))
    line = one_line_error(run("nll", "--data", tmp_path / "rgb.npy", "--prior", prior_file), "RGB")
    assert "rgb.npy" in line


def test_help_answers_without_importing_torch():
    """`diffcodec --help` and every command's --help import no torch (they used to take 4–10 s)."""
    script = (
        "import sys\n"
        "from diffcodec_cli.main import main\n"
        "for args in [['--help']] + [[name, '--help'] for name in sys.argv[1:]]:\n"
        "    try:\n"
        "        main(args, prog_name='diffcodec')\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (args, e.code)\n"
        "    heavy = [m for m in ('torch', 'diffcodec.prior', 'constriction') if m in sys.modules]\n"
        "    assert not heavy, f'{args} imported {heavy}'\n"
    )
    out = subprocess.run([sys.executable, "-c", script, *COMMANDS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    for name in COMMANDS:
        assert name in out.stdout


def test_every_registered_command_resolves():
    for name in COMMANDS:
        command = main.get_command(None, name)
        assert command is not None and command.name == name


def test_what_the_readme_command_writes_is_ignored_by_git():
    """The README's first command writes fashion.dcl and decoded/ into the working copy."""
    from pathlib import Path

    ignore = Path(__file__).resolve().parents[1] / ".gitignore"
    if not ignore.exists():
        pytest.skip("not a source checkout")
    patterns = ignore.read_text().split()
    assert "*.dcl" in patterns and "/decoded/" in patterns
