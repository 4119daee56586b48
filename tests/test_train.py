import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffcodec import data as data_module
from diffcodec.checkpoint import load_prior
from diffcodec.data import load_images, read_idx_images
from diffcodec.prior import PriorConfig
from diffcodec.train import TimestepSampler, TrainConfig, Trainer, read_train_state
from diffcodec.unet import UNetConfig
from diffcodec_cli.main import main


def tiny_config(dropout: float = 0.0) -> PriorConfig:
    unet = UNetConfig(image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                      dropout=dropout, learn_variance=True)
    return PriorConfig(unet=unet, num_timesteps=20, schedule="cosine")


def stripes(n: int = 64, seed: int = 0) -> np.ndarray:
    """Structured 8×8 images (a random stripe pattern each): easy to learn, far from uniform noise."""
    rng = np.random.default_rng(seed)
    base = np.where(np.arange(8) % 2 == 0, 200, 40)
    imgs = np.stack([np.roll(base, rng.integers(0, 2))[None, :].repeat(8, 0) for _ in range(n)])
    return (imgs[:, None] + rng.integers(-3, 4, imgs[:, None].shape)).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("objective", ["simple", "hybrid", "vlb"])
def test_training_lowers_the_loss(objective):
    torch.manual_seed(0)
    cfg = TrainConfig(objective=objective, batch_size=16, lr=2e-3, warmup_steps=5, seed=1)
    trainer = Trainer(tiny_config(), cfg, stripes(), torch.device("cpu"))
    first = np.mean([trainer.train_step()["mse"] for _ in range(5)])
    for _ in range(40):
        trainer.train_step()
    last = np.mean([trainer.train_step()["mse"] for _ in range(5)])
    assert last < 0.7 * first, (first, last)


def test_cli_run_writes_a_loadable_prior_with_better_heldout_bpd(tmp_path):
    np.save(tmp_path / "d.npy", stripes(96))
    args = ["train", "--data", tmp_path / "d.npy", "--out", tmp_path / "p.safetensors", "--channels", "8", "--mult", "1,2",
            "--res-blocks", "1", "--attention", "4", "--timesteps", "20", "--batch", "16", "--lr", "2e-3", "--warmup", "5",
            "--holdout", "16", "--eval-images", "16", "--eval-every", "60", "--ckpt-every", "60", "--ema", "0.9",
            "--eval-log", tmp_path / "log.jsonl", "--steps", "120", "--device", "cpu"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    prior = load_prior(tmp_path / "p.safetensors")
    assert prior.info["step"] == 120 and prior.config.unet.base_channels == 8
    curve = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [p["step"] for p in curve] == [60, 120]
    assert curve[-1]["heldout_bpd"] < 6.0  # uniform noise would cost 8 bits/dim


def test_resume_continues_exactly(tmp_path):
    """6 steps straight == 3 steps, checkpoint, fresh trainer from the checkpoint, 3 more steps (bitwise)."""
    cfg = TrainConfig(objective="vlb", batch_size=8, lr=1e-3, warmup_steps=2, seed=3, ema_decay=0.9)
    images = stripes(32)

    def fresh():
        return Trainer(tiny_config(dropout=0.1), cfg, images, torch.device("cpu"))

    straight = fresh()
    for _ in range(6):
        straight.train_step()

    first = fresh()
    for _ in range(3):
        first.train_step()
    first.save(tmp_path / "state")
    del first
    torch.manual_seed(12345)  # a resumed process starts with other global RNG state
    tensors, meta, prior_cfg, train_cfg = read_train_state(tmp_path / "state")
    assert prior_cfg == tiny_config(dropout=0.1) and train_cfg == cfg
    resumed = Trainer(prior_cfg, train_cfg, images, torch.device("cpu"))
    resumed.load_state(tensors, meta)
    assert resumed.step == 3
    for _ in range(3):
        resumed.train_step()

    for (name, a), b in zip(straight.prior.net.state_dict().items(), resumed.prior.net.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(straight.ema.net.parameters(), resumed.ema.net.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(straight.sampler.history, resumed.sampler.history)


def test_importance_sampler_is_uniform_until_full_then_follows_losses():
    s = TimestepSampler(4, loss_aware=True, uniform_mix=0.0, history=2)
    assert torch.allclose(s.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))
    s.update(torch.tensor([0, 0, 1, 1, 2, 2, 3]), torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0]))
    assert torch.allclose(s.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))  # t=3 has 1 value
    s.update(torch.tensor([3]), torch.tensor([3.0]))
    assert torch.allclose(s.probabilities(), torch.tensor([1 / 6, 1 / 6, 1 / 6, 1 / 2], dtype=torch.float64))
    t, w = s.sample(1000, torch.Generator().manual_seed(0))
    assert 0.4 < (t == 3).float().mean() < 0.6 and torch.allclose(w[t == 3], torch.tensor(0.5, dtype=torch.float64))


def test_two_process_torchrun_matches_single_process(tmp_path):
    if shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")):
        pytest.skip("torchrun not installed")
    np.save(tmp_path / "d.npy", stripes(64))
    common = ["train", "--data", str(tmp_path / "d.npy"), "--channels", "8", "--mult", "1,2", "--res-blocks", "1",
              "--attention", "4", "--timesteps", "20", "--batch", "8", "--lr", "1e-3", "--warmup", "2", "--dropout", "0",
              "--holdout", "0", "--eval-every", "0", "--steps", "5", "--objective", "vlb", "--ema", "0.5", "--device", "cpu",
              "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "diffcodec_cli.main", *common, "--out", str(tmp_path / "one.safetensors")],
                            capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    multi = subprocess.run([torchrun if os.path.exists(torchrun) else "torchrun", "--standalone", "--nproc_per_node", "2",
                            "-m", "diffcodec_cli.main", *common, "--out", str(tmp_path / "two.safetensors")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert multi.returncode == 0, multi.stderr[-2000:]
    sa, sb = read_train_state(tmp_path / "one.safetensors.state"), read_train_state(tmp_path / "two.safetensors.state")
    init = Trainer(sa[2], sa[3], stripes(64), torch.device("cpu")).prior.net.state_dict()  # DDP starts from rank 0's init
    one = {k[6:]: v for k, v in sa[0].items() if k.startswith("model.")}
    two = {k[6:]: v for k, v in sb[0].items() if k.startswith("model.")}
    flat = lambda d: torch.cat([d[k].flatten() for k in sorted(d)])  # noqa: E731
    moved = (flat(one) - flat(init)).norm()
    apart = (flat(one) - flat(two)).norm()
    # Gradients agree to float32 reduction order (~1e-7 relative), but Adam's first steps move each
    # parameter by about ±lr whatever its gradient's size, so a near-zero gradient whose sign differs
    # by round-off moves 2·lr apart. Whole-vector distances measured here: ~0.15% of the distance
    # travelled; a real bug (unsynchronised gradients, wrong slices) puts them tens of percent apart.
    assert moved > 1e-3
    assert apart < 1e-2 * moved, (float(apart), float(moved))
    # and the importance-sampling histories agree, so both runs drew the same t's
    assert torch.allclose(sa[0]["sampler.history"], sb[0]["sampler.history"], rtol=1e-4, atol=1e-6)
    assert int(sa[1]["step"]) == int(sb[1]["step"]) == 5


def write_png(path, array):
    Image.fromarray(array).save(path)


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, needle):
    assert result.exit_code != 0
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1, result.output
    assert needle in result.output, result.output


def test_bad_training_data_gives_clear_errors(tmp_path, monkeypatch):
    out = tmp_path / "p.safetensors"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("train", "--data", empty, "--out", out), "no image files")

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_png(mixed / "a.png", np.zeros((8, 8), np.uint8))
    write_png(mixed / "b.png", np.zeros((16, 16), np.uint8))
    assert_one_line_error(run_cli("train", "--data", mixed, "--out", out), "b.png")

    junk = tmp_path / "junk"
    junk.mkdir()
    write_png(junk / "a.png", np.zeros((8, 8), np.uint8))
    (junk / "notes.txt").write_text("hello")
    assert_one_line_error(run_cli("train", "--data", junk, "--out", out), "notes.txt")
    (junk / "notes.txt").unlink()
    (junk / "fake.png").write_text("not really a png")
    assert_one_line_error(run_cli("train", "--data", junk, "--out", out), "fake.png")

    monkeypatch.setattr(data_module, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    assert_one_line_error(run_cli("train", "--data", "fashion-mnist:train", "--out", out), "apt-get install dataset-fashion-mnist")
    assert_one_line_error(run_cli("train", "--data", tmp_path / "missing", "--out", out), "no such file")


def test_idx_reader_round_trip_and_truncation(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    raw = b"\x00\x00\x08\x03" + b"".join(int(v).to_bytes(4, "big") for v in (5, 28, 28)) + images.tobytes()
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(raw)
    assert np.array_equal(read_idx_images(tmp_path / "x.gz")[:, 0], images)
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(raw[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_idx_images(tmp_path / "short.gz")


def test_png_folder_and_npz_sources(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        write_png(folder / f"{i}.png", np.full((8, 8, 3), 10 * i, np.uint8))
    s = load_images(str(folder))
    assert s.images.shape == (3, 3, 8, 8) and s.names == ["0.png", "1.png", "2.png"]
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    assert load_images(str(tmp_path / "a.npz")).images.shape == (2, 3, 8, 8)
    np.save(tmp_path / "f.npy", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_images(str(tmp_path / "f.npy"))


def test_heldout_evaluation_through_onnxruntime_matches_float32():
    """--engine for the trainer's held-out figure: ONNX Runtime computes the same network in float32,
    so the held-out bits/dim agree with float32 eager to round-off."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    figures = {}
    for engine in ("float32", "onnxruntime"):
        trainer = Trainer(tiny_config(), TrainConfig(batch_size=8, seed=1), stripes(32), torch.device("cpu"),
                          heldout=stripes(8, seed=5), eval_engine=engine)
        figures[engine] = trainer.evaluate(steps=10).heldout_bpd
    assert figures["float32"] == pytest.approx(figures["onnxruntime"], rel=1e-6)
    assert figures["float32"] > 1.0  # an untrained prior: far from free
