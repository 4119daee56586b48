"""Per-timestep terms of the prior's bound, log scale (Improved DDPM, Nichol & Dhariwal 2021, Fig. 2).

The term plotted at timestep t is the one the step at t pays: KL(q(x_{t'}|x_t, x_0) ‖ p_θ(x_{t'}|x_t))
with t' the previous kept timestep (t' = t − 1 on the full schedule: L_{t−1}), and the decoder
term L_0 = −log p_θ(x_0|x_1) at t = 1; mean over images, bits/dim. Two series:

- the full T-step schedule: the committed ``default_prior_nll_mc1000.json`` (all 10,000 test images,
  MC estimator: each step's figure is an unbiased Horvitz–Thompson estimate, so it is noisy and
  steps that no image sampled are missing) when it was made with this prior; otherwise
  ``evaluate_nll`` (exact) on at most :data:`EXACT_IMAGES` of the images;
- the codecs' K-step chain: the ideal stage's exact per-step terms on the same images (each term
  spans several original steps, so it is larger than one full-schedule term at the same t).
"""

from __future__ import annotations

import numpy as np

from . import ideal
from .provenance import RESULTS, read_json

EXACT_IMAGES = 32
FULL_JSON = "default_prior_nll_mc1000.json"


def full_schedule(ctx) -> dict:
    prior = ctx.prior
    T = prior.config.num_timesteps
    committed = read_json(RESULTS / FULL_JSON)
    if committed and committed.get("prior_digest") == prior.digest and committed.get("num_steps") == T:
        steps = committed["steps"]
        return {"source": f"bench/results/{FULL_JSON} ({committed['estimator']}, {committed['num_images']} images of {committed.get('data')})",
                "t": [s["t"] for s in steps], "term_bpd": [s["term_bpd"] for s in steps],
                "term_bpd_stderr": [s["term_bpd_stderr"] for s in steps], "prior_bpd": committed["prior_bpd"],
                "num_images": committed["num_images"]}
    from diffcodec.likelihood import evaluate_nll

    n = min(ctx.num, EXACT_IMAGES)
    ctx.log(f"  full-schedule terms: exact, {n} images x {T} steps")
    res = evaluate_nll(prior, ctx.images[:n], prior.base_schedule, estimator="exact", workers=1, seed=0).to_dict()
    steps = res["steps"]
    return {"source": f"evaluate_nll exact, first {n} images of {ctx.data}", "t": [s["t"] for s in steps],
            "term_bpd": [s["term_bpd"] for s in steps], "term_bpd_stderr": [s["term_bpd_stderr"] for s in steps],
            "prior_bpd": res["prior_bpd"], "num_images": n}


def codec_chain(ctx) -> dict:
    body = ideal.stage(ctx)
    steps = body["steps"]
    return {"source": f"ideal_rd.json (exact, {body['num_images']} images of {ctx.data}, {body['num_steps']} {ctx.spacing}-spaced steps)",
            "t": [s["t"] for s in steps], "term_bpd": [s["term_bpd"] for s in steps], "num_images": body["num_images"]}


def stage(ctx) -> dict:
    """``timestep_terms.{json,png}``."""
    body = {"full_schedule": full_schedule(ctx), "codec_chain": codec_chain(ctx),
            "note": "term at t: the KL paid by the step at timestep t (L_{t-1} on the full schedule), decoder L_0 at t = 1; "
            "mean bits/dim over images"}
    plot(body, ctx.png("timestep_terms"), ctx)
    return ctx.write("timestep_terms", body)


def plot(body: dict, path, ctx) -> None:
    from .plotting import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3), sharey=True)
    for ax, key, title in ((axes[0], "full_schedule", "full schedule"), (axes[1], "codec_chain", "the codecs' chain")):
        s = body[key]
        t, v = np.array(s["t"], dtype=float), np.array([np.nan if x is None else x for x in s["term_bpd"]], dtype=float)
        shown = v > 0
        ax.plot(t[shown], v[shown], ".-" if len(t) <= 100 else "-", lw=0.8, ms=3, color="#d62728")
        if "term_bpd_stderr" in s:
            se = np.array([np.nan if x is None else x for x in s["term_bpd_stderr"]], dtype=float)
            ax.fill_between(t[shown], np.clip(v - se, 1e-12, None)[shown], (v + se)[shown], color="#d62728", alpha=0.2, lw=0)
        dec = v[np.argmin(t)]
        ax.annotate(f"decoder L0 = {dec:.3f}", (1, dec), xytext=(0.3, 0.9), textcoords="axes fraction", fontsize=8, arrowprops={"arrowstyle": "->", "lw": 0.6})
        ax.set(yscale="log", xlabel="timestep t", title=f"{title}: {len(t)} steps, {s['num_images']} images")
        ax.grid(alpha=0.3, which="both")
        ax.text(0.98, 0.02, s["source"], transform=ax.transAxes, ha="right", va="bottom", fontsize=6.5, color="#555")
    axes[0].set_ylabel("term paid at step t (bits/dim, log)")
    fig.suptitle(f"Per-timestep terms of the bound, prior {ctx.prior.digest[:8]}… (cf. Improved DDPM Fig. 2)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
