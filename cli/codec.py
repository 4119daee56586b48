"""`diffcodec compress` and `diffcodec decompress`: lossless bits-back coding with the prior."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import click
import numpy as np

from diffcodec.coding.lossless import DEFAULT_GRID, DEFAULT_MAX_BATCH, CodecParams, compress, decompress, to_tiles
from diffcodec.data import load_many
from diffcodec.defaults import CODEC_SPACING, CODEC_STEPS
from diffcodec.images import write_image
from diffcodec.schedule import Spacing
from diffcodec.terms import compute_terms
from diffcodec.units import nats_to_bpd

from .common import device_option, emit_json, json_option, one_line_errors, open_prior, prior_option, seeded


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def vlb_summary(prior, tiles: np.ndarray, schedule, seed: int = 0) -> tuple[float, float]:
    """(mean, standard error) of the VLB in bits/dim over tiles: terms.compute_terms at the codec's steps."""
    terms = compute_terms(prior, tiles, schedule, seeded(seed))
    bpd = nats_to_bpd(terms.total_nats, prior.num_dims).double()
    se = float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else float("nan")
    return float(bpd.mean()), se


@click.command(name="compress")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--out", type=click.Path(dir_okay=False), required=True, help="Compressed file to write.")
@prior_option
@click.option("--steps", type=click.IntRange(min=1), default=CODEC_STEPS, show_default=True, help="Chain steps K.")
@click.option("--spacing", type=click.Choice([s.value for s in Spacing]), default=CODEC_SPACING.value, show_default=True)
@click.option("--grid", type=float, default=DEFAULT_GRID, show_default=True, help="Latent grid points per std (G).")
@click.option("--threads", type=click.IntRange(min=0, max=255), default=1, show_default=True,
              help="torch threads for the network; recorded, the decoder uses the same (0 = current).")
@click.option("--max-batch", type=click.IntRange(min=1, max=65535), default=DEFAULT_MAX_BATCH, show_default=True)
@click.option("--no-vlb", is_flag=True, help="Skip the VLB comparison (saves one pass of network evaluations).")
@device_option
@json_option
@one_line_errors
def compress_cmd(inputs, out, prior_path, steps, spacing, grid, threads, max_batch, no_vlb, device, as_json):
    """Losslessly compress images (PNG files, folders, .npy/.npz, fashion-mnist:test) into one file."""
    prior, _ = open_prior(prior_path, device)
    data = load_many(list(inputs))
    params = CodecParams(steps=steps, spacing=Spacing(spacing), grid=grid, threads=threads, max_batch=max_batch)
    blob, stats = compress(prior, data.images, data.names, params, progress=True)
    _write_atomic(Path(out), blob)
    dims = stats.num_images * stats.dims_per_image
    record = {
        "images": stats.num_images,
        "tiles": stats.num_tiles,
        "steps": steps,
        "spacing": spacing,
        "grid": grid,
        "file_bytes": len(blob),
        "bits_per_dim": stats.file_bits / dims,
        "payload_bits_per_dim": stats.payload_bits / dims,
        "header_bits": stats.header_bits,
        "initial_bits": stats.initial_bits,
        "bootstrap_bits": stats.bootstrap_bits,
        "encode_seconds": stats.seconds,
        "coder_share": stats.coder_share,
        "prior_digest": prior.digest,
    }
    if not no_vlb:
        vlb, se = vlb_summary(prior, to_tiles(data.images, prior.image_shape[1]), prior.schedule(steps, spacing))
        tile_dims = stats.num_tiles * prior.num_dims
        record["vlb_bits_per_dim"] = vlb * tile_dims / dims  # per original pixel (tiles include padding)
        record["vlb_stderr"] = se * tile_dims / dims
        record["overhead_percent"] = 100.0 * (record["bits_per_dim"] / record["vlb_bits_per_dim"] - 1.0)
    if as_json:
        emit_json(record)
        return
    click.echo(f"wrote {out}: {stats.num_images} images, {len(blob):,} bytes, {record['bits_per_dim']:.4f} bits/dim")
    click.echo(f"  payload {record['payload_bits_per_dim']:.4f} bits/dim, header {stats.header_bits} bits, "
               f"initial bits {stats.initial_bits}, first tile by a classic codec {stats.bootstrap_bits} bits "
               f"({steps} steps, {spacing}, G = {grid:g})")
    if not no_vlb:
        click.echo(f"  VLB {record['vlb_bits_per_dim']:.4f} ± {record['vlb_stderr']:.4f} bits/dim "
                   f"→ overhead {record['overhead_percent']:+.2f} %")
    click.echo(f"  {stats.seconds:.1f} s, coder share {100 * stats.coder_share:.1f} % beyond the network")


@click.command(name="decompress")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--npy", is_flag=True, help="Write one images.npy [N, C, H, W] instead of PNG files.")
@prior_option
@device_option
@json_option
@one_line_errors
def decompress_cmd(file, out, npy, prior_path, device, as_json):
    """Decompress a file written by `diffcodec compress` (bit-exact, or an error and nothing written)."""
    if not Path(file).is_file():
        raise ValueError(f"{file}: no such file")
    blob = Path(file).read_bytes()
    prior, _ = open_prior(prior_path, device)
    images, names, stats = decompress(prior, blob, progress=True)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    if npy:
        np.save(folder / "images.npy", images, allow_pickle=False)
    else:
        for name, image in zip(names, images):
            target = folder / (name if name.lower().endswith(".png") else name + ".png")
            write_image(target, image)
    record = {"images": len(images), "out": str(folder), "decode_seconds": stats.seconds, "coder_share": stats.coder_share}
    if as_json:
        emit_json(record)
        return
    click.echo(f"decoded {len(images)} images into {folder} ({stats.seconds:.1f} s, bit-exact: checksums verified)")
