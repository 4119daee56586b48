"""Classic image codecs on the same images as diffcodec: lossy rate–distortion sweeps and lossless sizes.

Every figure is measured, never estimated: each image is encoded to its own complete file (container
and header included, exactly the bytes one would store), decoded again, and its PSNR computed from
the decoded pixels. A sweep point (one quality setting for every image) reports

    bits/dim = mean over images of 8·bytes_i / D                    (D = C·H·W)
    PSNR     = mean over images of 10·log10(255² / MSE_i)            (dB, "mean of per-image PSNR")

and, for DDPM-style comparisons, the pooled RMSE √(mean MSE) and the mean per-image RMSE. An image
decoded exactly has infinite PSNR; it is counted as :data:`PSNR_EXACT` dB and the point records how
many (``exact_images``); points with exact decodes are left out of the RD front (they sit at the
lossless end, far above the 30–40 dB range compared here).

Codecs and settings (the slow, best-compressing setting of each where one exists):

- JPEG: Pillow (libjpeg-turbo), ``optimize=True`` (optimized Huffman tables), quality sweep.
- WebP: Pillow (libwebp), ``method=6``, quality sweep. Gray images go in as RGB with neutral chroma.
- JPEG XL: imagecodecs (libjxl), effort 7 (the default; effort 9 scored lower PSNR per bit here,
  libjxl tunes for Butteraugli), distance sweep.
- AVIF: Pillow (libavif with aom), speed 2, monochrome 4:0:0 for gray images, quality sweep. On 200
  test images speed 2 needs 0.13–0.22 bits/dim less than Pillow's default speed 6 at 30–40 dB and
  is within 0.03 of speed 0 at 2.5× less time (26 vs 65 ms per image). imagecodecs'
  ``avif_encode`` writes every 2-D (gray) array losslessly whatever the level (701 bytes for test
  image 0 at every level, 2026.3.6), so it cannot be swept.

The bits/dim a codec needs for a target PSNR (:func:`rate_at_psnr`) is read off its RD front by
linear interpolation of bits/dim against mean PSNR between the two sweep points that bracket the
target; sweeps are dense enough (≤ 2 dB between neighbours in 25–45 dB) that the choice of
interpolation moves the figure by about 0.01 bits/dim.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from .provenance import RESULTS

PSNR_EXACT = 100.0  # dB counted for an exactly decoded image (documented on plots and in JSON)
TARGETS_DB = (30.0, 35.0, 40.0)
SPEC_BPD_AT_PSNR = {  # SPEC §6, measured earlier on the Fashion-MNIST test set (30 / 35 / 40 dB)
    "webp": (1.87, 2.51, 3.36),
    "jxl": (2.63, 3.28, 4.09),
    "avif": (3.93, 4.37, 4.85),
    "jpeg": (4.13, 5.07, 6.00),
}


def as_hwc(image: np.ndarray) -> np.ndarray:
    """[C, H, W] uint8 → [H, W] (gray) or [H, W, 3] (RGB), the layout the codecs take."""
    if image.ndim != 3 or image.shape[0] not in (1, 3) or image.dtype != np.uint8:
        raise ValueError(f"expected a [C, H, W] uint8 image with C 1 or 3, got {image.dtype} {list(image.shape)}")
    return image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))


def pillow_has(feature: str) -> Callable[[], bool]:
    def check() -> bool:
        from PIL import features

        return bool(features.check(feature))

    return check


def has_imagecodecs() -> bool:
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        return False
    return True


def _pil_encode(fmt: str, **fixed) -> Callable[[np.ndarray, object], bytes]:
    def encode(arr: np.ndarray, param=None) -> bytes:
        kwargs = dict(fixed)
        if param is not None:
            kwargs["quality"] = int(param)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt, **kwargs)
        return buf.getvalue()

    return encode


def _pil_decode(data: bytes, like: np.ndarray) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    return np.asarray(im.convert("L" if like.ndim == 2 else "RGB"))


def _jxl_encode(arr: np.ndarray, distance) -> bytes:
    import imagecodecs

    return imagecodecs.jpegxl_encode(arr, distance=float(distance), effort=7)


def _jxl_decode(data: bytes, like: np.ndarray) -> np.ndarray:
    import imagecodecs

    return imagecodecs.jpegxl_decode(data).reshape(like.shape)


@dataclass(frozen=True)
class LossyCodec:
    key: str  # short name used in JSON: jpeg, webp, jxl, avif
    name: str  # label on plots
    library: str
    settings: str
    param: str  # the swept parameter
    sweep: tuple  # from the smallest files to the largest
    encode: Callable[[np.ndarray, object], bytes]
    decode: Callable[[bytes, np.ndarray], np.ndarray]
    available: Callable[[], bool] = lambda: True  # imagecodecs is in the bench extra only

    def quick_sweep(self) -> tuple:
        return self.sweep[::2] + ((self.sweep[-1],) if len(self.sweep) % 2 == 0 else ())


LOSSY = (
    LossyCodec("jpeg", "JPEG", "Pillow/libjpeg-turbo", "optimize=True", "quality",
               (5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 88, 90, 92, 94, 95, 96, 97, 98, 99),
               _pil_encode("JPEG", optimize=True), _pil_decode),
    LossyCodec("webp", "WebP", "Pillow/libwebp", "method=6", "quality",
               (0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95, 100),
               _pil_encode("WEBP", method=6), _pil_decode, pillow_has("webp")),
    LossyCodec("jxl", "JPEG XL", "imagecodecs/libjxl", "effort=7", "distance",
               (25.0, 15.0, 10.0, 7.0, 5.0, 4.0, 3.5, 3.0, 2.5, 2.0, 1.7, 1.4, 1.2, 1.0, 0.8, 0.65, 0.5, 0.4, 0.3, 0.2, 0.1),
               _jxl_encode, _jxl_decode, has_imagecodecs),
    LossyCodec("avif", "AVIF", "Pillow/libavif (aom)", "speed=2, 4:0:0 for gray", "quality",
               (0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95),
               _pil_encode("AVIF", speed=2), _pil_decode, pillow_has("avif")),
)
LOSSY_BY_KEY = {c.key: c for c in LOSSY}


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def psnr(mse_value: float) -> float:
    """dB for 8-bit pixels; :data:`PSNR_EXACT` when the decode is exact."""
    return PSNR_EXACT if mse_value == 0 else float(10.0 * np.log10(255.0**2 / mse_value))


@dataclass
class Encoded:
    data: bytes
    decoded: np.ndarray  # like the input ([H, W] or [H, W, 3])
    mse: float

    @property
    def psnr(self) -> float:
        return psnr(self.mse)


def encode_decode(codec: LossyCodec, arr: np.ndarray, param) -> Encoded:
    data = codec.encode(arr, param)
    back = codec.decode(data, arr)
    if back.shape != arr.shape:
        raise RuntimeError(f"{codec.name} decoded shape {back.shape} for input {arr.shape}")
    return Encoded(data, back, mse(arr, back))


def measure(codec: LossyCodec, images: np.ndarray, param) -> tuple[np.ndarray, np.ndarray]:
    """One setting on every image ([N, C, H, W] uint8), one file each, every file decoded:
    ([N] int64 bytes, [N] float64 MSE on the 0–255 scale)."""
    sizes, mses = [], []
    for image in images:
        enc = encode_decode(codec, as_hwc(image), param)
        sizes.append(len(enc.data))
        mses.append(enc.mse)
    return np.asarray(sizes, dtype=np.int64), np.asarray(mses, dtype=np.float64)


def summarize(param, sizes: np.ndarray, mses: np.ndarray, dims: int) -> dict:
    """A sweep point from per-image bytes and MSE (see the module docstring for the means)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    return {
        "param": param,
        "bits_per_dim": float(8 * sizes.mean() / dims),
        "psnr": float(np.mean([psnr(m) for m in mses])),
        "rmse_pooled": float(np.sqrt(mses.mean())),
        "rmse_mean": float(np.sqrt(mses).mean()),
        "bytes_mean": float(sizes.mean()),
        "bytes_min": int(sizes.min()),
        "bytes_max": int(sizes.max()),
        "exact_images": int((mses == 0).sum()),
    }


def sweep_point(codec: LossyCodec, images: np.ndarray, param) -> dict:
    return summarize(param, *measure(codec, images, param), images[0].size)


def rd_front(bits_per_dim, psnr_db) -> tuple[np.ndarray, np.ndarray]:
    """The upper RD front: points sorted by rate, keeping each one that raises PSNR above all cheaper
    points (strictly increasing in both). Inputs any order; NaN/inf points are dropped."""
    r, p = np.asarray(bits_per_dim, dtype=np.float64), np.asarray(psnr_db, dtype=np.float64)
    keep = np.isfinite(r) & np.isfinite(p)
    r, p = r[keep], p[keep]
    order = np.lexsort((-p, r))  # by rate, the better PSNR first among equal rates
    out_r, out_p = [], []
    for i in order:
        if not out_p or (p[i] > out_p[-1] and r[i] > out_r[-1]):
            out_r.append(r[i])
            out_p.append(p[i])
    return np.asarray(out_r), np.asarray(out_p)


def rate_at_psnr(bits_per_dim, psnr_db, target: float) -> float | None:
    """Bits/dim at ``target`` dB on the RD front (linear between the bracketing points); None if the
    front does not reach the target on both sides."""
    r, p = rd_front(bits_per_dim, psnr_db)
    if len(p) < 2 or not p[0] <= target <= p[-1]:
        return None
    return float(np.interp(target, p, r))


def front_points(points: list[dict]) -> list[dict]:
    """The sweep points on the RD front that have no exact decodes (what the comparisons use)."""
    usable = [q for q in points if q["exact_images"] == 0]
    r, _ = rd_front([q["bits_per_dim"] for q in usable], [q["psnr"] for q in usable])
    on = set(r.tolist())
    return [q for q in usable if q["bits_per_dim"] in on]


@dataclass
class PerImage:
    """Per-image results of one codec's sweep: what subsets of the images are recomputed from."""

    params: list
    bytes: np.ndarray  # [S, N] int64
    mse: np.ndarray  # [S, N] float64, 0–255 scale

    def points(self, dims: int, indices=None) -> list[dict]:
        idx = slice(None) if indices is None else np.asarray(indices)
        return [summarize(p, b[idx], m[idx], dims) for p, b, m in zip(self.params, self.bytes, self.mse)]


def codec_summary(codec: LossyCodec, points: list[dict]) -> dict:
    """The JSON record of one codec: its points, RD front and bits/dim at the target PSNRs."""
    front = front_points(points)
    rate = [q["bits_per_dim"] for q in front]
    quality = [q["psnr"] for q in front]
    return {
        "name": codec.name,
        "library": codec.library,
        "settings": codec.settings,
        "param": codec.param,
        "points": points,
        "front_params": [q["param"] for q in front],
        "bits_per_dim_at_psnr": {f"{t:g}": rate_at_psnr(rate, quality, t) for t in TARGETS_DB},
    }


def sweep(codec: LossyCodec, images: np.ndarray, params=None, log=None) -> tuple[dict, PerImage]:
    t0 = time.time()
    params = list(codec.sweep if params is None else params)
    measured = [measure(codec, images, p) for p in params]
    per_image = PerImage(params, np.stack([b for b, _ in measured]), np.stack([m for _, m in measured]))
    out = codec_summary(codec, per_image.points(images[0].size))
    out["seconds"] = time.time() - t0
    if log:
        at = ", ".join(f"{k} dB {v:.2f}" if v is not None else f"{k} dB -" for k, v in out["bits_per_dim_at_psnr"].items())
        log(f"  {codec.name}: {len(params)} settings x {len(images)} images in {out['seconds']:.0f} s; bits/dim at {at}")
    return out, per_image


def smallest_file_bits_per_dim(codec: LossyCodec, shape: tuple[int, int, int]) -> float:
    """Bits/dim of a constant black image at the codec's cheapest setting: its header and framing."""
    arr = as_hwc(np.zeros(shape, dtype=np.uint8))
    return 8 * len(codec.encode(arr, codec.sweep[0])) / arr.size


# Lossless ---------------------------------------------------------------------------------------


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _webp_ll(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="WEBP", lossless=True, method=6, quality=100)
    return buf.getvalue()


def _jxl_ll(effort: int) -> Callable[[np.ndarray], bytes]:
    def encode(arr: np.ndarray) -> bytes:
        import imagecodecs

        return imagecodecs.jpegxl_encode(arr, lossless=True, effort=effort)

    return encode


def _jpegls(arr: np.ndarray) -> bytes:
    import imagecodecs

    return imagecodecs.jpegls_encode(arr)


def _decode_any(data: bytes, like: np.ndarray, key: str) -> np.ndarray:
    if key.startswith("jxl"):
        return _jxl_decode(data, like)
    if key == "jpegls":
        import imagecodecs

        return imagecodecs.jpegls_decode(data).reshape(like.shape)
    return _pil_decode(data, like)


LOSSLESS = {  # key → (label, encoder, availability); every encode is decoded and checked exact
    "png": ("PNG (optimize)", _png, lambda: True),
    "webp_lossless": ("WebP lossless (method 6)", _webp_ll, pillow_has("webp")),
    "jxl_lossless_e7": ("JPEG XL lossless, effort 7", _jxl_ll(7), has_imagecodecs),
    "jxl_lossless_e10": ("JPEG XL lossless, effort 10", _jxl_ll(10), has_imagecodecs),
    "jpegls": ("JPEG-LS (CharLS)", _jpegls, has_imagecodecs),
}


def lossless_available() -> list[str]:
    return [k for k, (_, _, ok) in LOSSLESS.items() if ok()]


def lossless_bytes(key: str, arr: np.ndarray) -> int:
    """Bytes of one image ([H, W] or [H, W, 3] uint8) in lossless codec ``key``, decode checked exact."""
    data = LOSSLESS[key][1](arr)
    back = _decode_any(data, arr, key)
    if not np.array_equal(back, arr):
        raise RuntimeError(f"{key}: lossless decode differs from the input")
    return len(data)


def tile(images: np.ndarray) -> np.ndarray:
    """[N, C, H, W] → one [C, rows·H, cols·W] mosaic, cols = ⌈√N⌉, rows = ⌈N/cols⌉, row-major; the
    cols·rows − N spare tiles are black (a few bytes; bits/dim divides by the N real images)."""
    n, c, h, w = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    canvas = np.zeros((rows * cols, c, h, w), dtype=np.uint8)
    canvas[:n] = images
    return np.ascontiguousarray(canvas.reshape(rows, cols, c, h, w).transpose(2, 0, 3, 1, 4).reshape(c, rows * h, cols * w))


# The stage --------------------------------------------------------------------------------------

RATE_NOTE = "bits/dim: mean over images of 8*bytes/D, one complete file per image (header and container included)"
PSNR_NOTE = f"psnr: mean of per-image PSNR (dB, peak 255) measured on the decoded pixels; an exact decode counts {PSNR_EXACT:g} dB"


def stage(ctx) -> dict:
    """``classic_lossy.{json,png}``: every lossy codec swept over ctx's images."""
    images = ctx.images
    ctx.log(f"classic lossy codecs on {len(images)} images, one file each")
    missing = [c.name for c in LOSSY if not c.available()]
    if missing:
        ctx.log(f"  not available here (pip install -e '.[bench]'): {', '.join(missing)}")
    swept = {c.key: sweep(c, images, c.quick_sweep() if ctx.quick else c.sweep, log=ctx.log) for c in LOSSY if c.available()}
    codecs = {k: v[0] for k, v in swept.items()}
    save_per_image(ctx.out / PER_IMAGE_NPZ, {k: v[1] for k, v in swept.items()}, ctx.data)
    body = {
        "per_image": f"{PER_IMAGE_NPZ}: bytes and MSE of every image at every setting (subsets of the images are summarized from it)",
        "unavailable": missing,
        "num_images": len(images),
        "image_shape": list(images.shape[1:]),
        "quick": ctx.quick,
        "rate": RATE_NOTE,
        "psnr": PSNR_NOTE,
        "interpolation": "bits_per_dim_at_psnr: linear interpolation of bits/dim against mean PSNR between the two "
        "sweep points bracketing the target on the codec's upper RD front (points with exact decodes left out)",
        "targets_db": list(TARGETS_DB),
        "spec_bits_per_dim_at_psnr": {k: dict(zip([f"{t:g}" for t in TARGETS_DB], v)) for k, v in SPEC_BPD_AT_PSNR.items()},
        "smallest_file_bits_per_dim": {c.key: smallest_file_bits_per_dim(c, images.shape[1:]) for c in LOSSY if c.available()},
        "codecs": codecs,
    }
    plot(body, ctx.png("classic_lossy"), ctx.data)
    return ctx.write("classic_lossy", body)


PER_IMAGE_NPZ = "classic_lossy_images.npz"


def save_per_image(path, per_image: dict[str, PerImage], data: str) -> None:
    arrays = {"data": np.str_(data)}
    for key, p in per_image.items():
        arrays.update({f"{key}_params": np.asarray(p.params, dtype=np.float64), f"{key}_bytes": p.bytes.astype(np.int32), f"{key}_mse": p.mse.astype(np.float32)})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def load_per_image(folder, data: str, num_images: int) -> dict[str, PerImage] | None:
    """The per-image sweep of ``data``'s first ``num_images`` images in ``folder``, or None.

    Stored as float32 MSE (relative error 6e-8: far below anything a figure shows)."""
    path = folder / PER_IMAGE_NPZ
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        if str(z["data"]) != data:
            return None
        out = {}
        for codec in LOSSY:
            if f"{codec.key}_bytes" in z and z[f"{codec.key}_bytes"].shape[1] == num_images:
                params = [type(codec.sweep[0])(p) for p in z[f"{codec.key}_params"]]
                out[codec.key] = PerImage(params, z[f"{codec.key}_bytes"].astype(np.int64), z[f"{codec.key}_mse"].astype(np.float64))
    return out or None


def subset_codecs(ctx, indices) -> dict | None:
    """``codecs`` records (as in classic_lossy.json) over the images ``indices`` of ctx's images,
    from the per-image sweep; None when it is not available for these images."""
    for folder in dict.fromkeys([ctx.out, RESULTS]):
        per_image = load_per_image(folder, ctx.data, ctx.num)
        if per_image is not None:
            dims = int(np.prod(ctx.images.shape[1:]))
            return {k: codec_summary(LOSSY_BY_KEY[k], p.points(dims, indices)) for k, p in per_image.items()}
    return None


def load_or_run(ctx) -> dict:
    """The classic sweep of ctx's images: a matching classic_lossy.json, else the stage is run."""
    found = ctx.cached("classic_lossy", num_images=ctx.num, data=ctx.data)
    return found if found is not None else stage(ctx)


def plot(body: dict, path, data: str) -> None:
    from .plotting import pyplot, style

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    rows = []
    for key, res in body["codecs"].items():
        pts = [q for q in res["points"] if q["exact_images"] == 0]
        ax.plot([q["bits_per_dim"] for q in pts], [q["psnr"] for q in pts], label=f"{res['name']} ({res['settings']})", **style(res["name"]))
        ours = res["bits_per_dim_at_psnr"]
        spec = body["spec_bits_per_dim_at_psnr"].get(key, {})
        cells = " / ".join("–" if ours[t] is None else f"{ours[t]:.2f}" for t in ours)
        rows.append(f"{res['name']:8s} {cells}   (SPEC {' / '.join(f'{v:.2f}' for v in spec.values())})")
    for t in body["targets_db"]:
        ax.axhline(t, color="#bbb", lw=0.6, ls=":")
    ax.text(0.98, 0.03, "bits/dim at " + " / ".join(f"{t:g}" for t in body["targets_db"]) + " dB\n" + "\n".join(rows),
            transform=ax.transAxes, ha="right", va="bottom", family="monospace", fontsize=7.5, bbox={"fc": "white", "ec": "#ccc"})
    ax.set(xlabel="bits/dim (one file per image, header included)", ylabel="PSNR (dB), mean of per-image PSNR",
           title=f"Classic codecs on {body['num_images']} {data} images", xlim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
