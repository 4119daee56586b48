"""The progressive strip: one image decoded from growing prefixes, beside WebP and JPEG XL files of
about the same size, every tile labelled with its bytes and PSNR.

Rows: diffcodec, WebP (Pillow, method 6, quality 0–100 in steps of 1), JPEG XL (imagecodecs,
effort 7, 80 distances from 25 down to 0.05). For every diffcodec tile each classic codec shows the
file (of that one image, header included) whose size is nearest to the tile's bytes; when even the
codec's smallest file is bigger, that smallest file is shown and marked.

The diffcodec row, by priority:

1. ``stage(ctx, tiles=[StripTile(bytes, pixels), …])`` from Python;
2. ``progressive_strip.npz`` in the results folder (or bench/results/), written by whoever runs
   ``diffcodec encode``/``decode`` on prefixes of one file:

       np.savez("bench/results/progressive_strip.npz",
                index=np.int64(i),              # the image's position in --data
                bytes=np.array([...], np.int64),  # [P] prefix lengths read, header included
                decoded=np.array(..., np.uint8),  # [P, C, H, W] or [P, H, W] decoded pixels
                prior_digest=np.str_(digest))

3. otherwise the *ideal* stand-in, labelled as such: x̂_0 rounded to pixels from x_k ~ q(x_k|x_0)
   at six steps, with bytes = the image's own cumulative KL to that step (D·rate/8, no header).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import classic
from .provenance import RESULTS

STRIP_NPZ = "progressive_strip.npz"
WEBP_QUALITIES = tuple(range(0, 101))
JXL_DISTANCES = tuple(float(d) for d in np.round(np.geomspace(25.0, 0.05, 80), 3))
TILES = 6
IDEAL_SOURCE = "ideal stand-in for diffcodec encode (bytes = the image's cumulative KL: no header, no coding overhead)"


@dataclass
class StripTile:
    bytes: int
    pixels: np.ndarray  # [C, H, W] uint8
    psnr: float = float("nan")
    note: str = ""

    def measured(self, original: np.ndarray) -> "StripTile":
        px = self.pixels.reshape(original.shape)
        mse = classic.mse(original, px)
        return StripTile(int(self.bytes), px, classic.psnr(mse), self.note + (", exact" if mse == 0 else ""))

    def label(self) -> str:
        quality = "exact" if "exact" in self.note else f"{self.psnr:.1f} dB"
        return f"{self.bytes} B, {quality}" + ("\n(smallest file)" if "smallest" in self.note else "")


def classic_row(codec: classic.LossyCodec, original: np.ndarray, targets: list[int], params) -> list[StripTile]:
    """For each target size, the codec's file of ``original`` ([C, H, W]) nearest to it in bytes."""
    arr = classic.as_hwc(original)
    files = [(p, classic.encode_decode(codec, arr, p)) for p in params]
    smallest = min(len(e.data) for _, e in files)
    row = []
    for target in targets:
        p, enc = min(files, key=lambda f: (abs(len(f[1].data) - target), len(f[1].data)))
        pixels = enc.decoded[None] if enc.decoded.ndim == 2 else enc.decoded.transpose(2, 0, 1)
        note = f"{codec.param} {p:g}" + (" (smallest file)" if len(enc.data) == smallest and smallest > target else "")
        row.append(StripTile(len(enc.data), pixels, enc.psnr, note))
    return row


def ideal_tiles(ctx, index: int, count: int = TILES) -> list[StripTile]:
    """The ideal stand-in for the diffcodec row (see the module docstring)."""
    from diffcodec.diffusion import pixels_to_model, q_sample
    from diffcodec.terms import compute_terms
    from diffcodec.units import nats_to_bpd

    prior, image = ctx.prior, ctx.images[index]
    schedule = prior.schedule(ctx.chain_steps, ctx.spacing)
    gen = torch.Generator().manual_seed(index)
    terms = compute_terms(prior, torch.from_numpy(image[None]), schedule, gen)
    step_bits = nats_to_bpd(terms.step_nats[0], 1).numpy()  # bits per image (D = 1 in the conversion)
    prior_bits = float(nats_to_bpd(terms.prior_nats[0], 1))
    cum_bytes = (prior_bits + np.concatenate([np.cumsum(step_bits[::-1])[::-1][1:], [0.0]])) / 8  # [K], rate to send x_k
    ladder = np.geomspace(max(cum_bytes[0] / 10, 1.0), max(cum_bytes[0], 1.0), count)  # a decade up to the last step
    ks = sorted({int(np.argmin(np.abs(cum_bytes - b))) for b in ladder}, reverse=True)  # noisiest first
    tab = prior.tables(schedule, "cpu")
    x0 = pixels_to_model(torch.from_numpy(image[None]), torch.float64)
    tiles = []
    with torch.inference_mode():
        for k in ks:
            kk = torch.tensor([k])
            x_t = q_sample(x0, tab.gather("alpha_bar", kk, x0), torch.randn(x0.shape, generator=gen, dtype=torch.float64))
            x0_hat = prior.reverse(x_t, kk, schedule).x0_hat
            pixels = ((x0_hat[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
            tiles.append(StripTile(int(round(cum_bytes[k])), pixels, note=f"t = {int(schedule.timesteps[k])}"))
    return tiles


def load_strip_npz(ctx) -> tuple[int, list[StripTile]] | None:
    for folder in dict.fromkeys([ctx.out, RESULTS]):
        path = folder / STRIP_NPZ
        if not path.exists():
            continue
        with np.load(path, allow_pickle=False) as z:
            if "prior_digest" in z and str(z["prior_digest"]) != ctx.prior.digest:
                ctx.log(f"ignoring {path}: another prior")
                continue
            index, sizes, decoded = int(z["index"]), z["bytes"], z["decoded"]
        decoded = decoded[:, None] if decoded.ndim == 3 else decoded
        return index, [StripTile(int(b), d, note="prefix") for b, d in zip(sizes, decoded)]
    return None


def stage(ctx, tiles: list[StripTile] | None = None, index: int | None = None) -> dict:
    """``strip.{json,png}``."""
    source = "given"
    if tiles is None:
        found = load_strip_npz(ctx)
        if found is not None:
            index, tiles = found
            source = STRIP_NPZ
    index = ctx.strip_index if index is None else index
    if not 0 <= index < len(ctx.images):
        raise ValueError(f"strip image {index} is not among the {len(ctx.images)} images")
    label = "diffcodec encode"
    if tiles is None:
        tiles, source, label = ideal_tiles(ctx, index), IDEAL_SOURCE, "diffcodec ideal"
    original = ctx.images[index]
    tiles = [t.measured(original) for t in tiles]
    targets = [t.bytes for t in tiles]
    webp, jxl = classic.LOSSY_BY_KEY["webp"], classic.LOSSY_BY_KEY["jxl"]
    rows = {label: tiles}
    if webp.available():
        rows["WebP"] = classic_row(webp, original, targets, WEBP_QUALITIES[::5] if ctx.quick else WEBP_QUALITIES)
    if jxl.available():
        rows["JPEG XL"] = classic_row(jxl, original, targets, JXL_DISTANCES[::4] if ctx.quick else JXL_DISTANCES)
    body = {
        "index": index,
        "diffcodec_source": source,
        "num_dims": int(original.size),
        "rows": {k: [{"bytes": t.bytes, "psnr": None if "exact" in t.note else t.psnr, "note": t.note} for t in v] for k, v in rows.items()},
        "note": "one image; classic tiles: the file nearest in bytes to each diffcodec tile (header included); "
        "PSNR of that image's decoded pixels",
    }
    what = "diffcodec encode decoded from growing prefixes of one file" if source == STRIP_NPZ else source
    plot(original, rows, ctx.png("strip"), f"{ctx.data} image {index}: {what}; WebP and JPEG XL: the file nearest in bytes")
    return ctx.write("strip", body)


def plot(original: np.ndarray, rows: dict, path, title: str) -> None:
    from .plotting import pyplot

    plt = pyplot()
    ncol = max(len(v) for v in rows.values()) + 1
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.45 * ncol, 1.75 * len(rows)), squeeze=False)

    def show(ax, pixels, text):
        img = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(text, fontsize=6.5)
        ax.set_xticks([])
        ax.set_yticks([])

    for r, (label, tiles) in enumerate(rows.items()):
        axes[r, 0].axis("off")
        for c, tile in enumerate(tiles):
            show(axes[r, c + 1], tile.pixels, tile.label())
        for c in range(len(tiles) + 1, ncol):
            axes[r, c].axis("off")
        axes[r, 1].set_ylabel(label, fontsize=8)
    show(axes[0, 0], original, "original")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
