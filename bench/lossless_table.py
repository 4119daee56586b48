"""The lossless table: bits/dim on the same images, diffcodec's bound and files beside classic codecs.

Rows (bits/dim = bits / (N·D); every file decoded and checked exact):

- VLB over the prior's full schedule (``evaluate_nll``; the MC estimator with 16 stratified steps per
  image when T > 68, else exact; one worker);
- VLB at the codecs' steps (the ideal stage's per-image terms, same images) and, when it matches, the
  committed exact evaluation ``default_prior_nll_exact100_1k.json`` as a cross-check;
- bits-back (``diffcodec compress``): one chained file of many images, reused from
  ``lossless.json`` of ``bench/lossless.py`` when it was made with this prior and data (computed
  through that script's ``chained`` otherwise); and one file per image (a one-tile file is its
  bootstrap WebP-LL/PNG stream under diffcodec's header, so every image is coded here, no network);
- progressive lossless, one file per image: a slot, filled from ``lossless_bytes`` in
  ``progressive.json`` (schema in bench/rd.py) once ``diffcodec encode`` exists;
- PNG, WebP lossless, JPEG XL lossless effort 7 (default) and 10 (maximum), JPEG-LS: one file per
  image, and all N images tiled into one image (bench/classic.py ``tile``) in one file.
"""

from __future__ import annotations

import time

import numpy as np

from . import classic, ideal
from .provenance import RESULTS, read_json
from .rd import PROGRESSIVE_JSON

MC_SAMPLES = 16


def vlb_full(ctx) -> dict:
    """Bits/dim of the bound over the prior's whole schedule on ctx's images."""
    from diffcodec.likelihood import evaluate_nll

    prior = ctx.prior
    T = prior.config.num_timesteps
    estimator = "mc" if T > 4 * (MC_SAMPLES + 1) else "exact"
    ctx.log(f"  VLB over the full {T}-step schedule ({estimator}) on {ctx.num} images")
    t0 = time.time()
    res = evaluate_nll(prior, ctx.images, prior.base_schedule, estimator=estimator, samples=MC_SAMPLES, workers=1, seed=0)
    return {"bits_per_dim": res.total_bpd, "stderr": res.total_bpd_stderr, "estimator": estimator, "steps": T,
            "samples": MC_SAMPLES if estimator == "mc" else None, "num_images": res.num_images, "seconds": time.time() - t0}


def vlb_codec_steps(ctx) -> dict:
    body = ideal.stage(ctx)
    out = {"bits_per_dim": body["total_bpd"], "stderr": body["total_bpd_stderr"], "steps": body["num_steps"],
           "num_images": body["num_images"], "source": "ideal_rd.json (compute_terms, one noise draw per term)"}
    committed = read_json(RESULTS / "default_prior_nll_exact100_1k.json")
    if committed and committed.get("prior_digest") == ctx.prior.digest and committed.get("data") == ctx.data \
            and committed.get("num_images") == ctx.num and committed.get("num_steps") == body["num_steps"]:
        out["cross_check"] = {"bits_per_dim": committed["total_bpd"], "stderr": committed["total_bpd_stderr"],
                              "source": "default_prior_nll_exact100_1k.json (evaluate_nll exact, other noise)"}
    return out


def _codec_params(ctx):
    from diffcodec.coding.lossless import CodecParams

    return CodecParams(steps=ctx.chain_steps, spacing=ctx.spacing).resolved(ctx.prior)


def bitsback_chained(ctx) -> dict:
    """The chained file's bits/dim: lossless.json when it matches this prior and data, else computed."""
    for name in ("lossless.json",):
        found = read_json(ctx.out / name) or read_json(RESULTS / name)
        if found and found.get("prior_digest") == ctx.prior.digest and found.get("data") == ctx.data and found.get("chained"):
            c = found["chained"]
            return {"bits_per_dim": c["file_bits_per_dim"], "num_images": c["images"], "vlb_same_images": c["vlb_bits_per_dim"],
                    "steps": found["steps"], "source": f"bench/results/{name} (python bench/lossless.py)"}
    from .lossless import chained

    ctx.log(f"  bits-back: chaining {ctx.num} images (no matching lossless.json)")
    names = [f"{i}.png" for i in range(ctx.num)]
    c = chained(ctx.prior, ctx.images, names, _codec_params(ctx))
    return {"bits_per_dim": c["file_bits_per_dim"], "num_images": c["images"], "vlb_same_images": c["vlb_bits_per_dim"],
            "steps": ctx.chain_steps, "source": "computed here with bench/lossless.py chained()"}


def bitsback_single(ctx) -> dict:
    """Every image in its own diffcodec file (compress + decompress, checked exact)."""
    from diffcodec.coding.lossless import compress, decompress

    params = _codec_params(ctx)
    sizes = []
    for i, image in enumerate(ctx.images):
        blob, _ = compress(ctx.prior, image[None], [f"{i}.png"], params)
        out, _, _ = decompress(ctx.prior, blob)
        if not np.array_equal(out[0], image):
            raise RuntimeError(f"diffcodec: image {i} did not decode exactly")
        sizes.append(len(blob))
    return {"bits_per_dim": 8 * float(np.mean(sizes)) / ctx.images[0].size, "num_images": len(sizes)}


def progressive_single(ctx) -> dict | None:
    for folder in dict.fromkeys([ctx.out, RESULTS]):
        found = read_json(folder / PROGRESSIVE_JSON)
        if not found or found.get("prior_digest", found.get("provenance", {}).get("prior_digest")) != ctx.prior.digest:
            continue
        sizes = [im.get("lossless_bytes") for im in found["images"] if isinstance(im, dict)]
        if sizes and all(s is not None for s in sizes):
            return {"bits_per_dim": 8 * float(np.mean(sizes)) / ctx.images[0].size, "num_images": len(sizes), "source": str(folder / PROGRESSIVE_JSON)}
    return None


def classic_lossless(ctx) -> dict:
    images, dims = ctx.images, ctx.images[0].size
    mosaic = classic.as_hwc(classic.tile(images))
    out = {}
    for key in classic.lossless_available():
        label = classic.LOSSLESS[key][0]
        t0 = time.time()
        per_image = [classic.lossless_bytes(key, classic.as_hwc(im)) for im in images]
        whole = classic.lossless_bytes(key, mosaic)
        out[key] = {"label": label, "one_file_per_image": 8 * float(np.mean(per_image)) / dims,
                    "whole_set_one_file": 8 * whole / (len(images) * dims), "seconds": time.time() - t0}
        ctx.log(f"  {label}: {out[key]['one_file_per_image']:.3f} per image, {out[key]['whole_set_one_file']:.3f} tiled")
    return out


def stage(ctx) -> dict:
    """``lossless_table.{json,png}``."""
    found = ctx.cached("lossless_table", prior_digest=ctx.prior.digest, data=ctx.data, num_images=ctx.num)
    full = found["vlb_full"] if found and found.get("vlb_full") else vlb_full(ctx)
    rows = {
        "vlb_full": full,
        "vlb_codec_steps": vlb_codec_steps(ctx),
        "bitsback_chained": bitsback_chained(ctx),
        "bitsback_single": bitsback_single(ctx),
        "progressive_single": progressive_single(ctx),
        "classic": classic_lossless(ctx),
    }
    n, h, w = ctx.num, *ctx.images.shape[2:]
    cols = int(np.ceil(np.sqrt(n)))
    body = {
        "num_images": ctx.num,
        "note": "bits/dim = bits/(N*D); every file decoded and checked exact; 'whole set' = the N images tiled "
        f"{cols} per row ({-(-n // cols)} rows, spare tiles black) into one {cols * w}x{-(-n // cols) * h} image",
        **rows,
        "table": table_rows(rows),
    }
    plot(body, ctx.png("lossless_table"), ctx)
    return ctx.write("lossless_table", body)


def table_rows(rows: dict) -> list[dict]:
    """The table as it is printed: label, bits/dim one file per image, bits/dim for the whole set."""
    v, s = rows["vlb_full"], rows["vlb_codec_steps"]
    c, one = rows["bitsback_chained"], rows["bitsback_single"]
    prog = rows["progressive_single"]
    out = [
        {"label": f"diffcodec VLB, full schedule ({v['steps']} steps, {v['estimator']})", "per_image": None, "whole_set": v["bits_per_dim"]},
        {"label": f"diffcodec VLB, codec chain ({s['steps']} steps)", "per_image": None, "whole_set": s["bits_per_dim"]},
        {"label": f"diffcodec compress, bits-back ({c['num_images']} images chained; one image per file)", "per_image": one["bits_per_dim"], "whole_set": c["bits_per_dim"]},
        {"label": "diffcodec encode, progressive lossless (one image per file" + (f", {prog['num_images']} images)" if prog else ")"),
         "per_image": prog["bits_per_dim"] if prog else None, "whole_set": None},
    ]
    out += [{"label": r["label"], "per_image": r["one_file_per_image"], "whole_set": r["whole_set_one_file"]} for r in rows["classic"].values()]
    return out


def plot(body: dict, path, ctx) -> None:
    from .plotting import pyplot

    plt = pyplot()
    rows = body["table"]
    fig, ax = plt.subplots(figsize=(9.5, 0.42 * len(rows) + 1.6))
    y = np.arange(len(rows))
    for offset, key, color, name in ((-0.2, "per_image", "#1f77b4", "one file per image"), (0.2, "whole_set", "#d62728", "whole set in one file / bound")):
        vals = [np.nan if r[key] is None else r[key] for r in rows]
        ax.barh(y + offset, vals, height=0.38, color=color, label=name)
        for yi, v in zip(y, vals):
            if np.isfinite(v):
                ax.text(v, yi + offset, f" {v:.2f}", va="center", fontsize=7.5)
    for yi, r in zip(y, rows):
        if r["per_image"] is None and r["whole_set"] is None:
            ax.text(0.05, yi, "not built yet", va="center", fontsize=7.5, color="#888")
    ax.set_yticks(y, [r["label"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("bits/dim (lossless)")
    ax.set_title(f"Lossless, {ctx.num} {ctx.data} images (prior {ctx.prior.digest[:8]}…)", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    ax.set_xlim(0, max(r[k] for r in rows for k in ("per_image", "whole_set") if r[k] is not None) * 1.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
