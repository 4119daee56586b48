"""Any-size colour priors (issue #14): training on crops, whole-image coding, the prior selection rule, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffcodec_cli.main import main as cli
from diffcodec import checkpoint
from diffcodec.checkpoint import load_prior, save_prior
from diffcodec.coding import container, lossless
from diffcodec.coding.lossless import CodecParams, compress, decompress, lossless_tile
from diffcodec.coding.progressive import ProgressiveParams, decode, encode
from diffcodec.prior import PriorConfig
from diffcodec.train import CropPool, TrainConfig, Trainer, read_train_state
from diffcodec.unet import UNetConfig
from tests.conftest import make_tiny_photo_prior, make_tiny_prior


def photo_config(size: int = 8) -> PriorConfig:
    unet = UNetConfig(image_channels=3, image_size=size, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(), dropout=0.0, learn_variance=True, norm="channel", mid_attention=False)
    return PriorConfig(unet=unet, num_timesteps=20, variance="learned")


def photos(seed: int = 0) -> list[np.ndarray]:
    """Three 'photographs' of different sizes: smooth gradients plus noise."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in ((12, 20), (17, 9), (10, 10)):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([yy * 9, xx * 11, (yy + xx) * 5]) + rng.integers(0, 30, (3, h, w))
        out.append(np.clip(base, 0, 255).astype(np.uint8))
    return out


@pytest.fixture
def photo_prior(tmp_path):
    prior = make_tiny_photo_prior()
    save_prior(prior, tmp_path / "photo.safetensors")
    return load_prior(tmp_path / "photo.safetensors")


def test_fully_convolutional_config_and_older_digests():
    cfg = photo_config().unet
    assert cfg.fully_convolutional and cfg.stride == 2
    assert cfg.to_dict()["norm"] == "channel" and cfg.to_dict()["mid_attention"] is False
    group = UNetConfig(image_channels=3, image_size=8, attention_resolutions=())
    assert not group.fully_convolutional  # GroupNorm statistics span the image
    assert "norm" not in group.to_dict() and "mid_attention" not in group.to_dict()  # older priors keep their digests
    assert load_prior().digest.startswith("9da697954497d03d")  # the embedded default still verifies


def test_network_pads_odd_sizes_by_replication(photo_prior):
    x = torch.randn(1, 3, 7, 9, dtype=torch.float64)
    t = torch.full((1,), 5.0)
    eps, v = photo_prior.network(x, t)
    assert eps.shape == (1, 3, 7, 9) and v.shape == (1, 3, 7, 9)
    padded = torch.nn.functional.pad(x.float(), (0, 1, 0, 1), mode="replicate")
    ref = photo_prior.net(padded, t)[..., :7, :9]
    assert torch.equal(torch.cat([eps, v], 1), ref)


def test_crop_pool_draws_every_position_and_resumes_exactly(tmp_path):
    pool = CropPool(photos(), 8)
    assert len(pool) == 3 and pool.shape == (3, 8, 8)  # (17, 9) and (12, 20) and (10, 10) all fit
    crops = pool.draw(400, torch.Generator().manual_seed(0))
    assert crops.shape == (400, 3, 8, 8) and crops.dtype == torch.uint8
    with pytest.raises(ValueError, match="no training image is 32x32"):
        CropPool(photos(), 32)

    cfg = TrainConfig(batch_size=4, lr=1e-3, warmup_steps=1, seed=1, flip=True, precision="bf16")
    straight = Trainer(photo_config(), cfg, CropPool(photos(), 8), torch.device("cpu"))
    for _ in range(4):
        straight.train_step()
    first = Trainer(photo_config(), cfg, CropPool(photos(), 8), torch.device("cpu"))
    for _ in range(2):
        first.train_step()
    first.save(tmp_path / "state")
    tensors, meta, prior_cfg, train_cfg = read_train_state(tmp_path / "state")
    assert prior_cfg == photo_config() and train_cfg == cfg
    resumed = Trainer(prior_cfg, train_cfg, CropPool(photos(), 8), torch.device("cpu"))
    resumed.load_state(tensors, meta)
    for _ in range(2):
        resumed.train_step()
    for (name, a), b in zip(straight.prior.net.state_dict().items(), resumed.prior.net.state_dict().values()):
        assert torch.equal(a, b), name


def test_cli_trains_a_colour_prior_on_crops_that_loads_and_codes(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, im in enumerate(photos()):
        Image.fromarray(im.transpose(1, 2, 0)).save(folder / f"p{i}.png")
    out = tmp_path / "p.safetensors"
    # the folder's images differ in size: only --crop trains on them
    r = CliRunner().invoke(cli, ["train", "--data", str(folder), "--out", str(out), "--steps", "2"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["train", "--data", str(folder), "--crop", "8", "--holdout", "1", "--eval-images", "2",
                                 "--out", str(out), "--steps", "2", "--eval-every", "2", "--channels", "8", "--mult", "1,2",
                                 "--res-blocks", "1", "--attention", "", "--norm", "channel", "--no-mid-attention",
                                 "--timesteps", "20", "--precision", "bf16", "--threads", "1"])
    assert r.exit_code == 0, r.output
    prior = load_prior(out)
    assert prior.any_size and prior.image_shape == (3, 8, 8) and prior.info["crop"] == 8
    image = photos()[1]
    blob, _ = compress(prior, image[None], ["x.png"], CodecParams(steps=4))
    assert np.array_equal(decompress(prior, blob)[0][0], image)


def test_colour_odd_sized_images_round_trip_whole(photo_prior, one_thread):
    images = np.stack([photos()[0], photos(1)[0]])  # two 12x20 colour images
    assert lossless_tile(photo_prior, 12, 20) == (12, 20)  # an image below the tile size is one tile, unpadded
    blob, stats = compress(photo_prior, images, ["a.png", "b.png"], CodecParams(steps=4))
    assert stats.num_tiles == 2
    out, names, _ = decompress(photo_prior, blob)
    assert np.array_equal(out, images) and names == ["a.png", "b.png"]
    for image in photos()[1:]:
        res = encode(photo_prior, image, ProgressiveParams(steps=4))
        back = decode(photo_prior, res.data)
        assert back.lossless and np.array_equal(back.image, image)
        assert res.data == encode(photo_prior, image, ProgressiveParams(steps=4)).data  # deterministic
        partial = decode(photo_prior, res.data[: len(res.data) // 2])
        assert partial.image.shape == image.shape and not partial.complete


def test_tiles_of_an_any_size_prior_just_cover_the_image(photo_prior):
    for h, w in [(256, 341), (130, 70), (64, 64), (65, 129), (1, 500), (410, 256)]:
        a, b = lossless_tile(photo_prior, h, w)
        rows, cols = -(-h // 64), -(-w // 64)  # the nominal 64-px grid's tile count is kept
        assert a <= 64 and b <= 64 and -(-h // a) == rows and -(-w // b) == cols
        assert rows * a - h < rows and cols * b - w < cols  # less than a pixel of padding per tile
    assert lossless_tile(photo_prior, 256, 341) == (64, 57)  # versions 3-4: 64x64 squares, 43 padded columns
    assert lossless_tile(photo_prior, 256, 341, version=4) == (64, 64)
    assert lossless_tile(make_tiny_prior(), 30, 11) == (8, 8)  # a fixed-size prior keeps its own square


def test_rectangular_tiles_and_version_4_files_round_trip(photo_prior, one_thread, monkeypatch):
    monkeypatch.setattr(lossless, "LOSSLESS_TILE", 8)  # 12x20 images in 2 x 3 tiles of 6x7
    images = np.stack([photos()[0], photos(1)[0]])
    assert lossless_tile(photo_prior, 12, 20) == (6, 7)
    blob, stats = compress(photo_prior, images, ["a.png", "b.png"], CodecParams(steps=3))
    assert stats.num_tiles == 12 and container.unpack(blob)[0].version == 5
    assert np.array_equal(decompress(photo_prior, blob)[0], images)
    with monkeypatch.context() as m:  # a file as version 4 wrote it: 8x8 squares, padded to 16x24
        m.setattr(lossless, "VERSION", 4)
        old, old_stats = compress(photo_prior, images, ["a.png", "b.png"], CodecParams(steps=3))
    assert old[3] == 4 and old_stats.num_tiles == 12
    assert np.array_equal(decompress(photo_prior, old)[0], images)


def test_grayscale_prior_refuses_colour_and_colour_prior_refuses_grayscale(photo_prior):
    with pytest.raises(ValueError, match="RGB but the prior codes grayscale"):
        compress(make_tiny_prior(), photos()[2][None], ["x.png"], CodecParams(steps=2))
    with pytest.raises(ValueError, match="grayscale but the prior codes RGB"):
        encode(photo_prior, np.zeros((1, 8, 8), np.uint8), ProgressiveParams(steps=2))


@pytest.fixture
def embedded_photo(tmp_path, monkeypatch, photo_prior):
    """The tiny colour prior installed as the embedded 'photo' prior."""
    real = checkpoint.embedded_prior_path
    path = tmp_path / "photo.safetensors"
    monkeypatch.setattr(checkpoint, "embedded_prior_path", lambda name: path if name == "photo" else real(name))
    return photo_prior


def test_prior_is_chosen_from_the_input_and_from_the_file(tmp_path, embedded_photo, one_thread):
    colour = tmp_path / "colour.png"
    Image.fromarray(photos()[2].transpose(1, 2, 0)).save(colour)
    runner = CliRunner()
    r = runner.invoke(cli, ["compress", str(colour), "-o", str(tmp_path / "c.dcl"), "--steps", "3", "--no-vlb"])
    assert r.exit_code == 0, r.output
    assert "prior: photo (embedded, chosen for colour input" in r.output
    r = runner.invoke(cli, ["decompress", str(tmp_path / "c.dcl"), "-o", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["images"] == 1  # --json: the choice is not printed
    back = np.asarray(Image.open(tmp_path / "out" / "colour.png")).transpose(2, 0, 1)
    assert np.array_equal(back, photos()[2])
    r = runner.invoke(cli, ["encode", str(colour), "-o", str(tmp_path / "c.dcp"), "--steps", "3"])
    assert r.exit_code == 0, r.output
    assert "prior: photo" in r.output
    r = runner.invoke(cli, ["decode", str(tmp_path / "c.dcp"), "-o", str(tmp_path / "d.png")])
    assert r.exit_code == 0 and "prior: photo (embedded, chosen for the file's prior" in r.output
    # --prior by name; the default prior refuses the colour image in one line
    r = runner.invoke(cli, ["compress", str(colour), "-o", str(tmp_path / "f.dcl"), "--prior", "fashion", "--steps", "2"])
    assert r.exit_code != 0 and "colour.png: RGB (3 channels) images, but the prior codes grayscale" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(cli, ["encode", str(colour), "-o", str(tmp_path / "f.dcp"), "--prior", "fashion", "--steps", "2"])
    assert r.exit_code != 0 and "colour.png: RGB (3 channels) images, but the prior codes grayscale" in r.output
    # a grayscale input picks the Fashion-MNIST prior
    gray = tmp_path / "gray.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(gray)
    r = runner.invoke(cli, ["encode", str(gray), str(colour), "-o", str(tmp_path / "both")])
    assert r.exit_code != 0 and "separate calls" in r.output


def test_missing_photo_prior_is_a_clear_error(tmp_path, monkeypatch):
    real = checkpoint.embedded_prior_path
    monkeypatch.setattr(checkpoint, "embedded_prior_path", lambda name: tmp_path / "none" if name == "photo" else real(name))
    colour = tmp_path / "colour.png"
    Image.fromarray(photos()[2].transpose(1, 2, 0)).save(colour)
    r = CliRunner().invoke(cli, ["compress", str(colour), "-o", str(tmp_path / "c.dcl")])
    assert r.exit_code != 0 and "photo prior is not installed" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("mode, problem", [("I;16", "16-bit"), ("CMYK", "CMYK"), ("RGBA", "transparency")])
def test_images_no_prior_codes_are_refused_in_one_line(tmp_path, mode, problem):
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    if mode == "I;16":
        Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(path)
    elif mode == "CMYK":
        Image.new("CMYK", (8, 8), (10, 20, 30, 40)).save(path)
    else:
        Image.new("RGBA", (8, 8), (10, 20, 30, 128)).save(path)
    for command in (["compress", str(path), "-o", str(tmp_path / "o.dcl")], ["encode", str(path), "-o", str(tmp_path / "o.dcp")]):
        r = CliRunner().invoke(cli, command)
        assert r.exit_code != 0 and "Traceback" not in r.output
        assert problem in r.output and str(path) in r.output and len(r.output.strip().splitlines()) == 1


def test_sample_at_any_size_and_info(tmp_path, photo_prior):
    path = tmp_path / "p.safetensors"
    save_prior(photo_prior, path)
    r = CliRunner().invoke(cli, ["sample", "--prior", str(path), "-n", "2", "-o", str(tmp_path / "s.png"),
                                 "--steps", "3", "--size", "12x6"])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "s.png").size[1] < Image.open(tmp_path / "s.png").size[0]  # 2 samples of 12x6 in a row
    r = CliRunner().invoke(cli, ["sample", "-n", "1", "-o", str(tmp_path / "f.png"), "--size", "12x6", "--steps", "2"])
    assert r.exit_code != 0 and "draws 28x28 images only" in r.output
    r = CliRunner().invoke(cli, ["info", str(path)])
    assert "fully convolutional" in r.output


def test_the_embedded_photo_prior_loads_by_name():
    prior = load_prior("photo")
    assert prior.any_size and prior.image_shape == (3, 32, 32) and prior.stride == 8
    assert checkpoint.embedded_prior_for_channels(3) == "photo" and checkpoint.embedded_prior_for_channels(1) == "fashion"
    assert checkpoint.embedded_prior_for_file(lambda d: d == prior.digest) == "photo"
    assert checkpoint.embedded_prior_for_file(lambda d: False) is None


def test_a_corrupted_progressive_file_fails_in_one_error(photo_prior, one_thread):
    """Every flipped byte after the magic gives a ValueError (a corrupted header, a desynchronized
    stream, a failed checksum), never constriction's AssertionError on an invalid pixel stream."""
    image = photos()[2]
    data = encode(photo_prior, image, ProgressiveParams(steps=4)).data
    for pos in range(3, len(data)):
        for flip in (0xFF, 0x01):
            bad = bytearray(data)
            bad[pos] ^= flip
            with pytest.raises(ValueError):
                decode(photo_prior, bytes(bad))
