"""Reading and writing 8-bit images (Pillow), with errors that name the file and the problem."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp"}


def read_image(path: str | Path, channels: int | None = None) -> np.ndarray:
    """An 8-bit image file as a [C, H, W] uint8 array.

    Grayscale (L) gives C = 1 and RGB gives C = 3. Palette and grayscale+alpha images are converted
    losslessly when possible; 16-bit, float, RGBA with transparency and CMYK images are refused.
    With ``channels`` given, a grayscale image is refused for a 3-channel prior and vice versa.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not an image")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise ValueError(f"{path}: {mode} images (16-bit or float) are not supported; convert to 8-bit first")
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                if im.mode == "RGB" and _is_gray(np.asarray(im)):
                    im = im.convert("L")
            if im.mode == "LA":
                if np.asarray(im)[..., 1].min() < 255:
                    raise ValueError(f"{path}: has transparency; remove the alpha channel first")
                im = im.convert("L")
            if im.mode == "RGBA":
                if np.asarray(im)[..., 3].min() < 255:
                    raise ValueError(f"{path}: has transparency; remove the alpha channel first")
                im = im.convert("RGB")
            if im.mode == "1":
                im = im.convert("L")
            if im.mode not in ("L", "RGB"):
                raise ValueError(f"{path}: image mode {im.mode} is not supported (expected 8-bit grayscale or RGB)")
            arr = np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image file Pillow can read") from None
    except OSError as err:
        raise ValueError(f"{path}: unreadable image ({err})") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if channels is not None and arr.shape[0] != channels:
        kind = {1: "grayscale", 3: "RGB"}
        raise ValueError(f"{path}: {kind[arr.shape[0]]} image, but the prior expects {kind.get(channels, channels)} images")
    return np.ascontiguousarray(arr)


def _is_gray(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write a [C, H, W] uint8 array as a lossless PNG."""
    arr = np.asarray(image, dtype=np.uint8)
    pil = Image.fromarray(arr[0], mode="L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), mode="RGB")
    pil.save(path, format="PNG")


def image_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """[N, C, H, W] uint8 → one [C, H', W'] grid image (black padding)."""
    n, c, h, w = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.zeros((c, nrows * (h + pad) + pad, ncols * (w + pad) + pad), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = images[i]
    return grid
