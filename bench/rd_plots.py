"""Figures of the rd stage: the RD plot with BD-rates, and the DDPM Figure 5 panels."""

from __future__ import annotations

import numpy as np

from .plotting import pyplot, style


def _footnote(ctx, curves) -> str:
    ideal = next((c for c in curves if c.kind == "ideal"), None)
    steps = f", {len(ideal.t)}-step chain" if ideal is not None and ideal.t is not None else ""
    text = (f"{ctx.num} {ctx.data} images{steps}. PSNR: mean of per-image PSNR (0-255). Classic codecs: one file per "
            "image, header included, decoded and measured. Ideal: cumulative KL (no header), x̂0 from x_t ~ q.")
    for c in curves:
        n = c.extra.get("num_images")
        if c.kind == "real" and n is not None and n != ctx.num:
            text += f"\n{c.label}: real files (header included) of {n} of the images; its BD-rates compare the classic codecs on the same {n}."
    return text


def plot_rd(curves, table: dict, path, ctx) -> None:
    """PSNR vs bits/dim, linear and log rate axes, BD-rates in a box."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, log in zip(axes, (False, True)):
        for c in curves:
            keep = c.bits_per_dim > 0
            ax.plot(c.bits_per_dim[keep], c.psnr[keep], label=c.label, **style(c.label))
            total = c.extra.get("total_bpd")
            if total is not None:
                ax.axvline(total, color=style(c.label).get("color"), ls="--", lw=0.8)
                ax.text(total, 12, f" lossless:\n VLB {total:.2f}", color=style(c.label).get("color"), fontsize=7.5)
        ax.set(xlabel="bits/dim", ylabel="PSNR (dB), mean of per-image PSNR", ylim=(10, 58))
        ax.grid(alpha=0.3, which="both")
        if log:
            ax.set_xscale("log")
            ax.set_xlim(0.01, 10)
            ax.set_title("log rate axis")
        else:
            ax.set_xlim(0, 8.5)
            ax.set_title("rate–distortion")
    axes[0].legend(loc="upper left", fontsize=8)
    lines = []
    for label, row in table.items():
        lines.append(f"BD-rate of {label} ({row['images']} images):")
        for anchor, v in row.items():
            if anchor == "images":
                continue
            if v["bd_rate_percent"] is None:
                lines.append(f"  vs {anchor:8s} no overlap")
            else:
                lo, hi = v["overlap_psnr_db"]
                lines.append(f"  vs {anchor:8s} {v['bd_rate_percent']:+6.1f} %  ({lo:.0f}–{hi:.0f} dB)")
    axes[1].text(0.02, 0.97, "\n".join(lines), transform=axes[1].transAxes, va="top", ha="left", family="monospace", fontsize=7.5,
                 bbox={"fc": "white", "ec": "#ccc"})
    fig.suptitle("diffcodec vs classic codecs, " + ctx.data)
    fig.text(0.5, 0.01, _footnote(ctx, curves), ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_panels(curves, path, ctx) -> None:
    """DDPM Figure 5: distortion vs step, rate vs step, distortion vs rate; RMSE row and PSNR row."""
    plt = pyplot()
    fig, ax = plt.subplots(2, 3, figsize=(14, 8))
    stepped = [c for c in curves if c.t is not None]
    for c in stepped:
        kw = style(c.label)
        kw.update(marker=None)
        ax[0, 0].plot(c.t, c.rmse, label=c.label, **kw)
        ax[1, 0].plot(c.t, c.psnr, label=c.label, **kw)
        ax[0, 1].plot(c.t, c.bits_per_dim, label=c.label, **kw)
        ax[1, 1].plot(c.t, np.where(c.bits_per_dim > 0, c.bits_per_dim, np.nan), label=c.label, **kw)
    for a in (ax[0, 0], ax[1, 0], ax[0, 1], ax[1, 1]):
        a.set_xlabel("timestep t (the reverse process runs left to right)")
        a.invert_xaxis()
        a.grid(alpha=0.3, which="both")
    ax[0, 0].set(ylabel="RMSE of x̂0 (0–255), pooled", title="distortion vs step")
    ax[1, 0].set(ylabel="PSNR of x̂0 (dB), mean per image", title="distortion vs step")
    ax[0, 1].set(ylabel="rate: cumulative bits/dim", title="rate vs step")
    ax[1, 1].set(ylabel="rate: cumulative bits/dim (log)", yscale="log", title="rate vs step, log scale (L_T ≈ 1e-9 off the axis)")
    ax[1, 1].set_ylim(bottom=1e-4)
    for c in curves:
        keep = c.bits_per_dim > 0
        ax[0, 2].plot(c.bits_per_dim, c.rmse, label=c.label, **style(c.label))
        ax[1, 2].plot(c.bits_per_dim[keep], c.psnr[keep], label=c.label, **style(c.label))
    ax[0, 2].set(xlabel="bits/dim", ylabel="RMSE (0–255), pooled", title="distortion vs rate", xlim=(0, 8.5), ylim=(0, 60))
    ax[1, 2].set(xlabel="bits/dim", ylabel="PSNR (dB), mean per image", title="distortion vs rate", xlim=(0, 8.5), ylim=(10, 58))
    for a in (ax[0, 2], ax[1, 2]):
        a.grid(alpha=0.3)
    ax[0, 2].legend(fontsize=8)
    fig.suptitle("Rate–distortion per step (DDPM Figure 5 panels), with classic codecs on the distortion-vs-rate panels")
    fig.text(0.5, 0.01, _footnote(ctx, curves), ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
