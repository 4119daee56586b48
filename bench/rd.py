"""Rate–distortion of diffcodec against classic codecs: DDPM Figure 5 panels, RD plot, BD-rates.

Curves (all on the same images; PSNR is the mean of per-image PSNR, RMSE the pooled √(mean MSE),
both on the 0–255 scale):

- ``diffcodec ideal``: cumulative KL vs x̂_0 from true samples of q (bench/ideal.py), no header;
- ``diffcodec encode``: the real progressive files, when ``progressive.json`` exists (below);
- JPEG, WebP, JPEG XL, AVIF: one real file per image (bench/classic.py).

BD-rate (bench/bdrate.py) of every diffcodec curve against every classic codec over their
overlapping PSNR range goes to ``rd.json`` and onto the plot.

Adding the real progressive curve
---------------------------------
Write ``progressive.json`` into the results folder (``bench/results/`` or ``--out``) and rerun
``python -m bench rd`` (or ``all``). Schema (one entry per image, in the order of the data, the same
first N images the other curves use; point k of every image is the same prefix/step, so the curve
is the mean over images of point k)::

    {
      "label": "diffcodec encode",              # optional
      "prior_digest": "9da69795…",              # must match the prior of the run
      "data": "fashion-mnist:test",
      "num_dims": 784,
      "images": [
        {"index": 0,
         "points": [{"bytes": 61, "bits_per_dim": 0.622, "psnr": 21.3, "rmse": 21.9, "step": 1000}, …],
         "lossless_bytes": 512},                # optional: the whole file (lossless table slot)
        …
      ]
    }

``bytes`` is the prefix length read (header included), ``bits_per_dim`` = 8·bytes/D, ``psnr`` and
``rmse`` of that prefix's reconstruction against the original (0–255 scale; ``psnr`` null for an
exact decode: such points are left out of the curve). ``step`` (optional) is the number n of
reverse steps the prefix carries, 0 … K; with K + 1 points per image the per-step panels plot point
n at the chain's timestep S_{K−n} (0 for n = K). ``index`` is the image's position in the data:
when the file covers only some of the run's images, its BD-rates are computed against the classic
codecs on exactly those images (from ``classic_lossy_images.npz``). ``images`` may also be a plain
list of point lists (the first images, in order). From Python, :func:`progressive_curve` turns the
same per-image points into a :class:`Curve`, and ``stage(ctx, extra=[curve])`` adds it without a
file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import bdrate, classic, ideal
from .provenance import RESULTS, read_json

IDEAL = "diffcodec ideal"
ENCODE = "diffcodec encode"
PROGRESSIVE_JSON = "progressive.json"


@dataclass
class Curve:
    label: str
    kind: str  # "classic", "ideal" or "real"
    bits_per_dim: np.ndarray  # [P] mean over images
    psnr: np.ndarray  # [P] dB, mean of per-image PSNR
    rmse: np.ndarray  # [P] pooled RMSE, 0–255 scale (NaN where unknown)
    t: np.ndarray | None = None  # [P] timestep of each point (diffcodec curves), noisiest first
    note: str = ""
    extra: dict = field(default_factory=dict)

    def rd(self) -> tuple[np.ndarray, np.ndarray]:
        return self.bits_per_dim, self.psnr

    def to_dict(self) -> dict:
        out = {"label": self.label, "kind": self.kind, "bits_per_dim": self.bits_per_dim, "psnr": self.psnr, "rmse": self.rmse, "note": self.note}
        if self.t is not None:
            out["t"] = self.t
        return out


def _point(p) -> tuple[float, float, float]:
    """(bits_per_dim, psnr, rmse) of one point given as a dict or a (bits_per_dim, psnr[, rmse]) tuple."""
    if isinstance(p, dict):
        q = p.get("psnr")
        return float(p["bits_per_dim"]), (np.inf if q is None else float(q)), float(p.get("rmse", np.nan) if p.get("rmse") is not None else np.nan)
    bpd, q, *rest = p
    return float(bpd), (np.inf if q is None else float(q)), float(rest[0]) if rest else np.nan


def progressive_curve(points_per_image: list, label: str = ENCODE, steps: list | None = None, indices: list | None = None) -> Curve:
    """The mean curve of per-image progressive points.

    points_per_image: one list per image of points, each a dict {"bits_per_dim", "psnr", "rmse"?}
    (the progressive.json schema) or a tuple (bits_per_dim, psnr[, rmse]); point k of every image
    belongs to the same prefix/step. Points where any image decodes exactly (psnr None or inf) are
    dropped (infinite PSNR has no mean). ``steps``: the timestep of each point (for the per-step
    panels); ``indices``: each image's position in the data (default 0, 1, …).
    """
    if not points_per_image:
        raise ValueError("progressive curve: no images")
    lengths = {len(p) for p in points_per_image}
    if len(lengths) != 1:
        raise ValueError(f"progressive curve: every image needs the same number of points, got {sorted(lengths)}")
    arr = np.array([[_point(p) for p in image] for image in points_per_image], dtype=np.float64)  # [N, P, 3]
    finite = np.isfinite(arr[:, :, 1]).all(axis=0)
    rmse = np.sqrt(np.mean(arr[:, :, 2] ** 2, axis=0))
    t = None if steps is None else np.asarray(steps)[finite]
    n = len(points_per_image)
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    return Curve(label, "real", arr[:, finite, 0].mean(0), arr[:, finite, 1].mean(0), rmse[finite], t=t,
                 note=f"real files (header included), mean over {n} images", extra={"num_images": n, "indices": indices})


def load_progressive(ctx) -> Curve | None:
    """The curve of ``progressive.json`` in ctx.out (or bench/results/), if it exists and matches the
    run's prior and data; None otherwise (a mismatch is logged)."""
    for folder in dict.fromkeys([ctx.out, RESULTS]):
        found = read_json(folder / PROGRESSIVE_JSON)
        if found is None:
            continue
        prov = found.get("provenance", {})
        digest, data = found.get("prior_digest", prov.get("prior_digest")), found.get("data", prov.get("data"))
        if digest != ctx.prior.digest or (data is not None and data != ctx.data):
            ctx.log(f"ignoring {folder / PROGRESSIVE_JSON}: made with prior {str(digest)[:12]} on {data}")
            continue
        images = found["images"]
        lists = [im["points"] if isinstance(im, dict) else im for im in images]
        indices = [im.get("index", i) if isinstance(im, dict) else i for i, im in enumerate(images)]
        ctx.log(f"adding {folder / PROGRESSIVE_JSON}: {len(lists)} images")
        return progressive_curve(lists, found.get("label", ENCODE), _timesteps(ctx, lists), indices)
    return None


def _timesteps(ctx, lists: list) -> list | None:
    """Timestep of each point when every point carries ``step`` n and there are K + 1 of them."""
    first = lists[0] if lists else []
    if not first or not all(isinstance(p, dict) and p.get("step") is not None for p in first):
        return None
    K = ctx.chain_steps
    if len(first) != K + 1:
        return None
    S = np.concatenate([[0], ctx.prior.schedule(K, ctx.spacing).timesteps])  # S_0 = 0: x_0 itself
    return [int(S[K - int(p["step"])]) for p in first]


def ideal_curve(body: dict) -> Curve:
    steps = body["steps"]  # noisiest first
    return Curve(
        IDEAL,
        "ideal",
        np.array([s["cum_rate_bpd"] for s in steps]),
        np.array([s["psnr_mean"] for s in steps]),
        np.array([s["rmse_pooled"] for s in steps]),
        t=np.array([s["t"] for s in steps]),
        note=f"cumulative KL (no header) vs x0_hat from x_t ~ q, {body['num_images']} images, {body['num_steps']} steps",
        extra={"total_bpd": body["total_bpd"], "decoder_bpd": body["decoder_bpd"], "term_bpd": np.array([s["term_bpd"] for s in steps])},
    )


def classic_curves(body: dict) -> list[Curve]:
    out = []
    for res in body["codecs"].values():
        pts = [q for q in res["points"] if q["exact_images"] == 0]
        out.append(Curve(res["name"], "classic", np.array([q["bits_per_dim"] for q in pts]), np.array([q["psnr"] for q in pts]),
                         np.array([q["rmse_pooled"] for q in pts]), note=f"{res['library']}, {res['settings']}, one file per image"))
    return out


def anchors_for(ctx, curve: Curve, anchors: list[Curve]) -> tuple[list[Curve], int]:
    """The classic curves to compare ``curve`` with: on its own images when it covers only some of
    ctx's (its ``extra['indices']``), else ``anchors``; and the number of images they cover."""
    indices = curve.extra.get("indices")
    if indices is None or list(indices) == list(range(ctx.num)):
        return anchors, ctx.num
    if max(indices) < ctx.num:
        sub = classic.subset_codecs(ctx, indices)
        if sub is not None:
            return classic_curves({"codecs": sub}), len(indices)
    ctx.log(f"  {curve.label}: its images are not all among the run's {ctx.num}; BD-rates against all {ctx.num}")
    return anchors, ctx.num


def bd_table(curves: list[Curve], ctx=None) -> dict:
    """{diffcodec curve label: {classic label: bdrate.compare(classic, diffcodec), …, "images": n}}."""
    anchors = [c for c in curves if c.kind == "classic"]
    table = {}
    for c in curves:
        if c.kind == "classic":
            continue
        own, n = anchors_for(ctx, c, anchors) if ctx is not None else (anchors, None)
        table[c.label] = {a.label: bdrate.compare(a.rd(), c.rd()) for a in own}
        table[c.label]["images"] = n
    return table


def stage(ctx, extra: list[Curve] | None = None) -> dict:
    """``rd.json``, ``rd.png`` and ``rd_panels.png``; ``extra`` curves are added as given."""
    classic_body = classic.load_or_run(ctx)
    ideal_body = ideal.stage(ctx)
    curves = classic_curves(classic_body) + [ideal_curve(ideal_body)]
    real = load_progressive(ctx)
    curves += ([real] if real is not None else []) + list(extra or [])
    table = bd_table(curves, ctx)
    for label, row in table.items():
        ctx.log(f"  BD-rate of {label} on {row['images']} images: "
                + ", ".join(f"{k} {v['bd_rate_percent']:+.1f} %" for k, v in row.items() if k != "images" and v["bd_rate_percent"] is not None))
    body = {
        "num_images": ctx.num,
        "steps": ctx.chain_steps,
        "spacing": ctx.spacing,
        "psnr": classic.PSNR_NOTE,
        "rmse": "pooled RMSE sqrt(mean MSE over all pixels of all images), 0-255 scale (DDPM Figure 5 / Table 4)",
        "bd_rate": "Bjontegaard delta rate (%) of each diffcodec curve (test) against each classic codec (anchor), "
        "log-rate vs mean PSNR, Akima interpolation (bjontegaard package), over the overlapping PSNR range; negative = fewer bits; "
        "'images': how many images both sides cover (a curve made on fewer images is compared with the classic codecs on those images)",
        "bd_rates": table,
        "classic_bits_per_dim_at_psnr": {c["name"]: c["bits_per_dim_at_psnr"] for c in classic_body["codecs"].values()},
        "diffcodec_bits_per_dim_at_psnr": {c.label: {f"{t:g}": classic.rate_at_psnr(*c.rd(), t) for t in classic.TARGETS_DB}
                                           for c in curves if c.kind != "classic"},
        "progressive_included": real is not None,
        "curves": [c.to_dict() for c in curves],
        "figures": ["rd.png", "rd_panels.png"],
    }
    from .rd_plots import plot_panels, plot_rd

    plot_rd(curves, table, ctx.png("rd"), ctx)
    plot_panels(curves, ctx.png("rd_panels"), ctx)
    return ctx.write("rd", body)
