"""A digit-like 28×28 grayscale test set (MNIST-style), rendered with Pillow → .npy [N, 1, 28, 28] uint8.

MNIST is not installed offline, and it is *out of the domain* of the Fashion-MNIST prior (mostly
black, thin bright strokes): the kind of data on which a bits-back chain's initial bits stop paying
for themselves. This set imitates MNIST's preprocessing: a glyph 0–9 (Pillow's built-in scalable
font, so no font file is needed) is drawn white on black at 4× resolution with a random stroke
width, rotation (±15°), shear and size, cropped to its ink, scaled so that its longer side is 20
pixels (anti-aliased by the area filter), and centred by its centre of mass in a 28×28 frame.
Deterministic for a given seed.

    python bench/digits.py --num 500 --out /tmp/digits500.npy
    diffcodec compress /tmp/digits500.npy -o /tmp/digits.dcl
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE, BOX, UP = 28, 20, 4  # frame, longer side of the digit, supersampling factor


def render_digit(digit: int, rng: np.random.Generator) -> np.ndarray:
    """One [28, 28] uint8 digit-like image."""
    font = ImageFont.load_default(size=int(rng.integers(22, 30)) * UP)
    canvas = Image.new("L", (64 * UP, 64 * UP), 0)
    draw = ImageDraw.Draw(canvas)
    stroke = int(rng.integers(1, 4)) * UP // 2
    draw.text((16 * UP, 8 * UP), str(digit), fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    shear = float(rng.uniform(-0.25, 0.25))
    canvas = canvas.transform(canvas.size, Image.AFFINE, (1, shear, -shear * 32 * UP, 0, 1, 0), Image.BILINEAR)
    canvas = canvas.rotate(float(rng.uniform(-15, 15)), Image.BILINEAR)
    canvas = canvas.crop(canvas.getbbox())
    w, h = canvas.size
    scale = BOX / max(w, h)
    small = canvas.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BOX)
    ink = np.asarray(small, dtype=np.float64)
    ys, xs = np.indices(ink.shape)
    cy, cx = (ys * ink).sum() / ink.sum(), (xs * ink).sum() / ink.sum()
    top = int(np.clip(round(SIZE / 2 - cy), 0, SIZE - ink.shape[0]))
    left = int(np.clip(round(SIZE / 2 - cx), 0, SIZE - ink.shape[1]))
    out = np.zeros((SIZE, SIZE), dtype=np.uint8)
    out[top : top + ink.shape[0], left : left + ink.shape[1]] = np.asarray(small)
    return out


def digit_set(num: int, seed: int = 0) -> np.ndarray:
    """``num`` digit-like images [N, 1, 28, 28] uint8, digits 0–9 in random order."""
    rng = np.random.default_rng(seed)
    digits = rng.integers(0, 10, size=num)
    return np.stack([render_digit(int(d), rng) for d in digits])[:, None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help=".npy file to write")
    args = ap.parse_args()
    np.save(args.out, digit_set(args.num, args.seed), allow_pickle=False)
    print(f"wrote {args.num} digit-like images to {args.out}")


if __name__ == "__main__":
    main()
