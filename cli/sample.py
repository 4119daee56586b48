"""`diffcodec sample` and `diffcodec info`."""

from __future__ import annotations

import click

from diffcodec.schedule import Spacing

from .common import (device_option, emit_json, engine_option, json_option, one_line_errors, open_prior, prior_option, seeded,
                     steps_option)

spacing_option = click.option(
    "--spacing",
    type=click.Choice([s.value for s in Spacing]),
    default=Spacing.EVEN.value,
    show_default=True,
    help="even: K evenly strided steps; front: every one of the first K/2 steps, the rest strided.",
)


@click.command()
@prior_option
@click.option("-n", "num", type=click.IntRange(min=1), default=16, show_default=True, help="Number of samples.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), required=True, help="Output PNG (a grid of samples).")
@steps_option(None, "Respace the chain to K steps (default: the prior's full schedule).")
@spacing_option
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", default=None, help="WxH of the samples, for a fully convolutional prior such as photo (default: the "
              "size it was trained on).")
@device_option
@engine_option("the network runs", "(README, Engines; onnxruntime on a CPU without bf16 units); float32: the reference (another engine may change a few "
               "pixels of the same seed's samples).")
@one_line_errors
def sample(prior_path, num, out, steps, spacing, seed, size, device, engine):
    """Draw samples from a prior by ancestral sampling and save them as one PNG grid."""
    from diffcodec.engines import resolve_engine
    from diffcodec.files import check_output_file
    from diffcodec.images import image_grid, write_image
    from diffcodec.sampling import sample as draw_samples

    check_output_file(out)
    prior, dev = open_prior(prior_path, device)
    engine_used = resolve_engine(engine, dev)
    schedule = prior.schedule(steps, spacing)
    images = draw_samples(prior, num, schedule, seeded(seed), progress=True, engine=engine_used, size=_size(size))
    write_image(out, image_grid(images.numpy()))
    click.echo(f"wrote {num} samples ({schedule.num_steps} steps, engine {engine_used.value}) to {out}")


def _size(text: str | None) -> tuple[int, int] | None:
    """'WxH' → (H, W)."""
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must be WxH (e.g. 64x48), got {text!r}") from None
    if not (1 <= w <= 4096 and 1 <= h <= 4096):
        raise ValueError(f"--size must be 1..4096 pixels each way, got {text!r}")
    return h, w


@click.command()
@click.argument("prior_path", required=False, type=click.Path())
@json_option
@one_line_errors
def info(prior_path, as_json):
    """Show a prior's configuration, parameter count and digest (default: the embedded prior).

    PRIOR_PATH: a diffcodec prior file or a diffusers DDPM folder (what was understood of it).
    """
    prior, _ = open_prior(prior_path, "cpu")
    record = {
        "digest": prior.digest,
        "parameters": sum(p.numel() for p in prior.net.parameters()),
        "image_shape": list(prior.image_shape),
        "config": prior.config.to_dict(),
        "info": prior.info,
    }
    if as_json:
        emit_json(record)
        return
    c, h, w = prior.image_shape
    click.echo(f"digest      {prior.digest}")
    click.echo(f"image       {c}x{h}x{w}")
    click.echo(f"parameters  {record['parameters']:,}")
    lines = _diffusers_lines(record["config"]) if record["config"].get("source") == "diffusers" else _native_lines(prior.config)
    for line in lines:
        click.echo(line)
    for key, value in prior.info.items():
        click.echo(f"{key:<11} {value}")


def _native_lines(cfg) -> list[str]:
    u = cfg.unet
    return [
        f"schedule    {cfg.schedule.value}, T = {cfg.num_timesteps}",
        f"variance    {cfg.variance.value}   clip x0: {cfg.clip_x0}",
        f"network     ch {u.base_channels}, mult {list(u.channel_mult)}, {u.num_res_blocks} res blocks, "
        f"attention at {list(u.attention_resolutions)}, dropout {u.dropout}"
        + (", per-pixel norms: fully convolutional (any image size)" if u.fully_convolutional else ""),
    ]


def _diffusers_lines(d: dict) -> list[str]:
    """What diffusers_prior understood of a diffusers folder (see its module docstring for the mapping)."""
    schedule = d["schedule"] if d["schedule"] == "squaredcos_cap_v2" else f"{d['schedule']} β {d['beta_start']:g} → {d['beta_end']:g}"
    first = {"small": "log β̃_2", "large": "log β̃_2", "learned": "between log β̃_2 and log β_1"}[d["variance"]]
    u = d["unet"]
    return [
        "source      diffusers UNet2DModel + DDPMScheduler",
        f"schedule    {schedule}, T = {d['num_timesteps']} (float64; the UNet is fed diffusers' timestep t − 1)",
        f"variance    {d['variance']} (diffusers {d['variance_type']}; first step {first}, as DDPM's likelihood code)"
        f"   clip x0: {d['clip_x0']}",
        f"prediction  {d['prediction_type']}" + ("" if d["prediction_type"] == "epsilon" else " (converted to ε in float64)"),
        f"network     blocks {u.get('block_out_channels')}, {u.get('layers_per_block')} layers per block, "
        f"down {u.get('down_block_types')}, up {u.get('up_block_types')}",
    ]
