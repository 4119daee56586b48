import json

import pytest
import torch

from diffcodec.checkpoint import load_prior, save_prior
from diffcodec.terms import compute_terms

from .conftest import make_tiny_prior, random_images


@pytest.mark.parametrize("variance", ["small", "large", "learned"])
def test_round_trip_gives_bit_identical_outputs(tmp_path, variance):
    prior = make_tiny_prior(variance, channels=3)
    path = tmp_path / "p.safetensors"
    digest = save_prior(prior, path, info={"note": "test"})
    loaded = load_prior(path)
    assert loaded.digest == digest and loaded.config == prior.config and loaded.info == {"note": "test"}
    x, t = torch.randn(4, 3, 8, 8), torch.tensor([1.0, 5.0, 9.0, 20.0])
    with torch.no_grad():
        assert torch.equal(prior.net(x, t), loaded.net(x, t))
    images = random_images(2, channels=3)
    a = compute_terms(prior, images, generator=torch.Generator().manual_seed(0)).step_nats
    b = compute_terms(loaded, images, generator=torch.Generator().manual_seed(0)).step_nats
    assert torch.equal(a, b)


def test_digest_depends_on_weights_and_config(tmp_path):
    a = save_prior(make_tiny_prior(seed=0), tmp_path / "a")
    b = save_prior(make_tiny_prior(seed=1), tmp_path / "b")
    c = save_prior(make_tiny_prior("small", seed=0), tmp_path / "c")
    assert len({a, b, c}) == 3


def test_corrupted_truncated_and_foreign_files_fail_clearly(tmp_path):
    path = tmp_path / "p.safetensors"
    save_prior(make_tiny_prior(), path)
    data = path.read_bytes()

    flipped = bytearray(data)
    flipped[-100] ^= 0x40
    (tmp_path / "flipped").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupted"):
        load_prior(tmp_path / "flipped")

    (tmp_path / "short").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        load_prior(tmp_path / "short")

    (tmp_path / "tiny").write_bytes(data[:5])
    with pytest.raises(ValueError, match="not a diffcodec prior"):
        load_prior(tmp_path / "tiny")

    (tmp_path / "text").write_text("hello, this is not a prior at all")
    with pytest.raises(ValueError, match="not a diffcodec prior"):
        load_prior(tmp_path / "text")

    with pytest.raises(ValueError, match="not found"):
        load_prior(tmp_path / "missing")


def test_file_holds_no_pickle_and_a_json_config(tmp_path):
    path = tmp_path / "p.safetensors"
    save_prior(make_tiny_prior(), path)
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert json.loads(header["__metadata__"]["config"])["unet"]["image_size"] == 8
    assert b"\x80\x04" not in data[:16]  # not a pickle/zip torch checkpoint
