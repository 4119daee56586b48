"""The photograph corpus (issue #14): preparation on a tiny fake corpus, the split, the data specs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffcodec import photos
from diffcodec.data import load_images
from diffcodec.photo_sources import KEPT, Source

# (name, width, height): JPEGs of several aspects; the last is below the short side and stays as is
FAKE = [("leaf", 96, 64), ("lake", 80, 60), ("door", 48, 72), ("cup", 64, 64), ("moth", 100, 40), ("tiny", 30, 24)]


def _fake_photo(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h) + 60], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8), "RGB")


@pytest.fixture
def fake_folder(tmp_path):
    folder = tmp_path / "fake"
    folder.mkdir()
    for i, (name, w, h) in enumerate(FAKE):
        _fake_photo(w, h, i).save(folder / f"{name}.jpg", quality=85)
    return folder


@pytest.fixture
def corpus(tmp_path, fake_folder, monkeypatch):
    """The fake folder prepared at short side 32, half the photos in test; the env points at it."""
    root = tmp_path / "corpus"
    result = photos.prepare(root, photos.folder_sources(fake_folder), short_side=32, install=False, test_fraction=0.5)
    monkeypatch.setenv("DIFFCODEC_PHOTOS_DIR", str(root))
    return result


def test_prepare_writes_downsampled_pngs_and_manifest(corpus):
    m = json.loads((corpus.root / "manifest.json").read_text())
    assert m == corpus.manifest and len(m["photos"]) == len(FAKE)
    assert m["counts"]["train"] >= 1 and m["counts"]["test"] >= 1  # this fake corpus has both splits
    for e, (name, w, h) in zip(m["photos"], sorted(FAKE)):  # folder_sources sorts by name
        assert e["id"] == f"fake/{name}" and e["original_size"] == [w, h] and e["version"] is None
        assert e["size"] == list(photos.target_size(w, h, 32))
        assert min(e["size"]) == min(32, w, h)
        with Image.open(corpus.root / e["file"]) as im:
            assert im.format == "PNG" and im.mode == "RGB" and list(im.size) == e["size"]
    assert "short side 32" in corpus.summary()


def test_split_is_by_photograph_and_never_both(corpus):
    train = {p.name for p in (corpus.root / "train").glob("*.png")}
    test = {p.name for p in (corpus.root / "test").glob("*.png")}
    assert train and test and not train & test and len(train | test) == len(FAKE)
    for e in corpus.manifest["photos"]:
        assert e["split"] == photos.split_of(e["id"], 0.5) and e["file"].startswith(e["split"] + "/")


def test_the_reviewed_split_is_pinned():
    """Changing split_of or an id would move photos between train and test under existing priors."""
    ids = [s.id for s in KEPT]
    assert len(set(ids)) == len(ids) == 41
    test = [i for i in ids if photos.split_of(i) == "test"]
    assert test == ["mate/RainDrops", "mate/YellowFlower", "lomiri/Dragonfly", "lomiri/friends", "plasma/ColorfulCups",
                    "plasma/summer_1am", "skimage/astronaut", "skimage/coffee", "skimage/rocket"]  # fmt: skip


def test_downsample_is_an_area_mean():
    arr = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    small = np.asarray(photos.downsample(Image.fromarray(arr, "RGB"), 20)).astype(int)
    means = arr.reshape(20, 2, 30, 2, 3).mean(axis=(1, 3))
    assert small.shape == (20, 30, 3) and np.abs(small - means).max() <= 1
    assert photos.target_size(2560, 1600, 256) == (410, 256) and photos.target_size(2056, 3088, 256) == (256, 384)


def test_specs_load_tiles_and_whole_photos(corpus):
    tiles = load_images("photos:test:16", channels=3)
    assert tiles.images.dtype == np.uint8 and tiles.shape == (3, 16, 16) and len(tiles) >= 2
    test_stems = {e["file"][5:-4] for e in corpus.manifest["photos"] if e["split"] == "test"}
    assert {n.rsplit("-y", 1)[0] for n in tiles.names} <= test_stems
    whole = photos.load_photos("train")
    assert [p.image.shape[0] for p in whole] == [3] * len(whole)
    with pytest.raises(ValueError, match=r"photos:train:SIZE") as err:
        load_images("photos:train")  # the fake train photos differ in size
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="expected photos:train"):
        load_images("photos:val")


def test_photo_crops_are_deterministic_and_from_the_split(corpus):
    a = photos.photo_crops("train", 16, 12, seed=3)
    b = photos.photo_crops("train", 16, 12, seed=3)
    assert a.images.shape == (12, 3, 16, 16) and np.array_equal(a.images, b.images) and a.names == b.names
    by_name = {p.name[:-4]: p.image for p in photos.load_photos("train")}
    for crop, name in zip(a.images, a.names):
        stem, pos = name[:-4].rsplit("-y", 1)
        y, x = map(int, pos.split("-x"))
        assert np.array_equal(by_name[stem][:, y : y + 16, x : x + 16], crop)


def test_missing_corpus_is_one_line_with_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFCODEC_PHOTOS_DIR", str(tmp_path / "nowhere"))
    for spec in ("photos:test", "photos:train:32"):
        with pytest.raises(ValueError) as err:
            load_images(spec)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(spec) and "python -m diffcodec.photos prepare" in msg


def test_cli_prepare_from_folder_and_missing_package(fake_folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["prepare", "--from-folder", str(fake_folder), "--out", str(out), "--short-side", "32", "--no-install"]
    assert photos.main(argv) == 0
    assert f"wrote {len(FAKE)} photos" in capsys.readouterr().out
    missing = (Source("x/a", "diffcodec-no-such-package", "/nonexistent.jpg"),)
    with pytest.raises(ValueError, match=r"missing Debian packages diffcodec-no-such-package; install them with: sudo apt-get"):
        photos.prepare(out, missing, install=False)


def test_grayscale_sources_are_refused(tmp_path):
    folder = tmp_path / "gray"
    folder.mkdir()
    Image.fromarray(np.full((40, 40), 128, np.uint8), "L").save(folder / "g.jpg")
    with pytest.raises(ValueError, match="grayscale image"):
        photos.prepare(tmp_path / "out", photos.folder_sources(folder), install=False)
