"""Data sources → uint8 image arrays [N, C, H, W] with names.

A data SPEC is one of:

- ``fashion-mnist:train`` / ``fashion-mnist:test``: the IDX files of Debian's ``dataset-fashion-mnist``
  (60,000 / 10,000 images of 1×28×28);
- ``photos:train`` / ``photos:test``: the prepared colour photograph corpus (``python -m
  diffcodec.photos prepare``; see :mod:`diffcodec.photos`). Its photos differ in size and an ImageSet
  holds one size, so the whole photos load here only when they happen to share one;
  ``photos:SPLIT:SIZE`` gives their non-overlapping SIZE×SIZE tiles. Whole photos of any size:
  ``diffcodec.photos.load_photos``; random training crops: ``diffcodec.photos.photo_crops``;
- a folder of image files (PNG and other lossless formats, sorted by name; not recursive);
- one image file;
- an ``.npy`` file of uint8 images [N, H, W], [N, C, H, W] or [N, H, W, C] (C ∈ {1, 3}), or an
  ``.npz`` holding one such array (or one named ``images``).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .images import IMAGE_SUFFIXES, read_image

FASHION_MNIST_DIR = Path(os.environ.get("DIFFCODEC_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_FILES = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}


@dataclass
class ImageSet:
    images: np.ndarray  # [N, C, H, W] uint8
    names: list[str]  # one per image, used when writing images back

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def subset(self, limit: int | None) -> "ImageSet":
        if limit is None:
            return self
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        return ImageSet(self.images[:limit], self.names[:limit])


def read_idx_images(path: Path) -> np.ndarray:
    """A (gzipped) IDX3 uint8 image file → [N, 1, H, W]."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: unreadable IDX file ({err})") from None
    if len(data) < 16 or data[:4] != b"\x00\x00\x08\x03":
        raise ValueError(f"{path}: not an IDX3 uint8 image file")
    n, h, w = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
    if len(data) != 16 + n * h * w:
        raise ValueError(f"{path}: truncated IDX file ({len(data) - 16} pixel bytes, expected {n * h * w})")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, 1, h, w).copy()


def load_fashion_mnist(split: str) -> ImageSet:
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r} (expected train or test)")
    path = FASHION_MNIST_DIR / FASHION_MNIST_FILES[split]
    if not path.exists():
        raise ValueError(
            f"Fashion-MNIST not found at {path}; install it with: sudo apt-get install dataset-fashion-mnist"
        )
    images = read_idx_images(path)
    return ImageSet(images, [f"fashion-mnist-{split}-{i:05d}.png" for i in range(len(images))])


def _as_nchw(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{source}: images must be uint8 pixels, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"{source}: pixel values must lie in 0..255, got {arr.min()}..{arr.max()}")
        arr = arr.astype(np.uint8)
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4 and arr.shape[1] in (1, 3):
        return arr
    if arr.ndim == 4 and arr.shape[3] in (1, 3):
        return arr.transpose(0, 3, 1, 2)
    raise ValueError(f"{source}: expected images shaped [N, H, W], [N, C, H, W] or [N, H, W, C] with C 1 or 3, got {list(arr.shape)}")


def load_array(path: Path) -> ImageSet:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npy/.npz file ({err})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.keys())
            key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise ValueError(f"{path}: .npz must hold one array or one named 'images', found {keys}")
            arr = loaded[key]
    else:
        arr = loaded
    images = np.ascontiguousarray(_as_nchw(arr, str(path)))
    if len(images) == 0:
        raise ValueError(f"{path}: holds no images")
    return ImageSet(images, [f"{path.stem}-{i:05d}.png" for i in range(len(images))])


def load_image_files(paths: list[Path], source: str) -> ImageSet:
    if not paths:
        raise ValueError(f"{source}: no image files found")
    arrays = [read_image(p) for p in paths]
    first = arrays[0].shape
    for p, a in zip(paths, arrays):
        if a.shape != first:
            raise ValueError(f"{p}: {_describe(a.shape)} differs from {paths[0].name} ({_describe(first)}); all images must match")
    return ImageSet(np.stack(arrays), [p.name for p in paths])


def _describe(shape) -> str:
    c, h, w = shape
    return f"{w}x{h} {'grayscale' if c == 1 else 'RGB'}"


_KIND = {1: "grayscale (1 channel)", 3: "RGB (3 channels)"}


def check_fits(s: ImageSet, spec: str, channels: int | None = None, size: tuple[int, int] | None = None) -> None:
    """ValueError naming the file (for a folder: its first image) unless the images have ``channels``
    channels and, when given, ``size`` (H, W)."""
    c, h, w = s.shape
    where = str(Path(spec) / s.names[0]) if not spec.startswith("fashion-mnist:") and Path(spec).is_dir() else spec
    if channels is not None and c != channels:
        raise ValueError(f"{where}: {_KIND.get(c, c)} images, but the prior codes {_KIND.get(channels, channels)} images")
    if size is not None and (h, w) != tuple(size):
        raise ValueError(f"{where}: images are {h}x{w}, the prior expects {size[0]}x{size[1]}")


def load_images(spec: str, channels: int | None = None, size: tuple[int, int] | None = None) -> ImageSet:
    """Resolve a data SPEC (see the module docstring) to an :class:`ImageSet`; with ``channels`` (and
    ``size``) given, images that do not fit are refused with an error naming the file."""
    s = _load(spec)
    check_fits(s, spec, channels, size)
    return s


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder, sorted (hidden files ignored); ValueError naming any other file."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    bad = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if bad:
        raise ValueError(f"{bad[0]}: not an image file (folders may hold only {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _load(spec: str) -> ImageSet:
    if spec.startswith("fashion-mnist:"):
        return load_fashion_mnist(spec.split(":", 1)[1])
    if spec.startswith("photos:"):
        from .photos import load_spec  # photos imports this module

        return load_spec(spec)
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"{spec}: no such file or folder (expected a folder of PNGs, an image, .npy/.npz, fashion-mnist:train|test or photos:train|test)")
    if path.is_dir():
        return load_image_files(image_files(path), spec)
    if path.suffix.lower() in (".npy", ".npz"):
        return load_array(path)
    return load_image_files([path], spec)


def load_many(specs: list[str], channels: int | None = None) -> ImageSet:
    """Several SPECs (e.g. a list of PNG files) concatenated; all must share one shape (and have
    ``channels`` channels when given)."""
    if not specs:
        raise ValueError("no input given")
    sets = [load_images(s, channels) for s in specs]
    shape = sets[0].shape
    for s, spec in zip(sets, specs):
        if s.shape != shape:
            raise ValueError(f"{spec}: images are {_describe(s.shape)}, but {specs[0]} holds {_describe(shape)}")
    return ImageSet(np.concatenate([s.images for s in sets]), [n for s in sets for n in s.names])
