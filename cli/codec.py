"""`diffcodec compress` and `diffcodec decompress`: lossless bits-back coding with the prior."""

from __future__ import annotations

import math
from pathlib import Path

import click

from diffcodec.defaults import AUTO_CODING_ENGINE, CODEC_SPACING, CODEC_STEPS, DEFAULT_GRID, DEFAULT_MAX_BATCH, Engine
from diffcodec.schedule import Spacing

from .common import (auto_names, coding_engine_option, decoding_engine_option, device_option, emit_json, json_option, one_line_errors,
                     open_prior, prior_option, steps_option)


def tile_vlb_bits(prior, tiles, schedule, threads: int, seed: int = 0, engine: Engine = Engine.FLOAT32):
    """[n] float64 VLB of each tile in bits (terms.compute_terms at the codec's steps, through the
    codec's engine, pinned to the codec's thread count; the coder's own view of the prior, so its ONNX
    session is the coder's)."""
    import torch

    from diffcodec.coding.lossless import pinned_threads
    from diffcodec.engines import coding_view
    from diffcodec.terms import compute_terms

    with pinned_threads(threads):
        terms = compute_terms(coding_view(prior, engine, threads), tiles, schedule, torch.Generator().manual_seed(seed))
    return (terms.total_nats / math.log(2)).double().numpy()


def _mean_se(x) -> tuple[float, float | None]:
    """Mean and standard error of the mean (None for fewer than two values)."""
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None
    return float(x.mean()), se


def compress_record(prior, images, stats, params, out: str, blob_bytes: int, with_vlb: bool) -> dict:
    """The JSON record of a compress call: the file, its fixed costs in bytes, and the chain apart from them.

    fixed costs = header + initial bits (paid once per file, whatever its size); the first tiles are
    stored by a classic codec (the bootstrap); the chain (the other tiles) is what the prior coded, and
    its overhead is measured against the VLB of exactly those tiles. Per-dim figures of the chain are
    per tile pixel (tiles of larger images include their edge padding).
    """
    from diffcodec.coding.lossless import lossless_tile, to_tiles

    dims = stats.num_images * stats.dims_per_image
    tile = lossless_tile(prior, *images.shape[2:])
    tile_dims = prior.image_shape[0] * tile[0] * tile[1]
    boot = stats.bootstrap_tiles
    chained = stats.num_tiles - boot
    rec = {
        "out": out, "images": stats.num_images, "tiles": stats.num_tiles, "steps": params.steps,
        "spacing": params.spacing.value, "grid": params.grid, "threads": params.threads, "engine": params.engine.value,
        "file_bytes": blob_bytes, "bits_per_dim": stats.file_bits / dims, "payload_bits_per_dim": stats.payload_bits / dims,
        "header_bytes": stats.header_bits // 8, "initial_bytes": stats.initial_bits // 8,
        "fixed_bytes": (stats.header_bits + stats.initial_bits) // 8,
        "bootstrap_tiles": boot, "bootstrap_bytes": stats.bootstrap_bits // 8, "bootstrap_codec": stats.bootstrap_codec,
        "header_bits": stats.header_bits, "initial_bits": stats.initial_bits, "bootstrap_bits": stats.bootstrap_bits,
        "chain_tiles": chained, "chain_bytes": stats.chain_bits / 8,
        "chain_bits_per_dim": stats.chain_bits / (chained * tile_dims) if chained else None,
        "encode_seconds": stats.seconds, "coder_share": stats.coder_share, "prior_digest": prior.digest,
        "renamed": [],
    }
    if with_vlb:
        tiles = to_tiles(images, tile)
        vlb = tile_vlb_bits(prior, tiles, prior.schedule(params.steps, params.spacing), params.threads,
                            engine=params.engine)
        _, se = _mean_se(vlb / tile_dims)  # per tile pixel; the file's figures are per image pixel
        rec["vlb_bits_per_dim"] = float(vlb.sum() / dims)
        rec["vlb_stderr"] = None if se is None else se * stats.num_tiles * tile_dims / dims
        rec["overhead_percent"] = 100.0 * (rec["bits_per_dim"] / rec["vlb_bits_per_dim"] - 1.0)
        if chained:
            chain_mean, chain_se = _mean_se(vlb[boot:] / tile_dims)
            rec["chain_vlb_bits_per_dim"] = chain_mean
            rec["chain_vlb_stderr"] = chain_se
            rec["chain_overhead_percent"] = 100.0 * (stats.chain_bits / vlb[boot:].sum() - 1.0)
        else:
            rec["chain_vlb_bits_per_dim"] = rec["chain_vlb_stderr"] = rec["chain_overhead_percent"] = None
    return rec


def print_compress(rec: dict) -> None:
    unit = "tiles" if rec["tiles"] != rec["images"] else "images"
    click.echo(f"wrote {rec['out']}: {rec['images']} image{'s' * (rec['images'] != 1)}, {rec['file_bytes']:,} bytes, "
               f"{rec['bits_per_dim']:.4f} bits/dim")
    click.echo(f"  fixed costs  {rec['fixed_bytes']:,} bytes, paid once per file: header {rec['header_bytes']}, "
               f"initial bits {rec['initial_bytes']}")
    boot = rec["bootstrap_tiles"]
    first = f"{unit[:-1] if boot == 1 else f'{boot} {unit}'}"
    click.echo(f"  classic      first {first} in {rec['bootstrap_bytes']:,} bytes by {rec['bootstrap_codec']} "
               f"(the seed of the stack)")
    if rec["chain_tiles"] == 0:
        click.echo("  chain        none: too few tiles for the prior to pay for its first pops; the classic "
                   "codec stores them all")
    else:
        line = (f"  chain        {rec['chain_tiles']} {unit if rec['chain_tiles'] > 1 else unit[:-1]} in "
                f"{rec['chain_bytes']:,.0f} bytes, {rec['chain_bits_per_dim']:.4f} bits/dim")
        if rec.get("chain_vlb_bits_per_dim") is not None:
            se = rec["chain_vlb_stderr"]
            spread = "" if se is None else f" ± {se:.4f}"
            line += f" vs their VLB {rec['chain_vlb_bits_per_dim']:.4f}{spread} → {rec['chain_overhead_percent']:+.2f} %"
        click.echo(line)
    share = rec["coder_share"]
    coder = "" if share is None else f", coder {100 * share:.1f} % of the time beyond the network"
    click.echo(f"  {rec['steps']} steps, {rec['spacing']}, G = {rec['grid']:g}, engine {rec['engine']}; "
               f"{rec['encode_seconds']:.1f} s{coder}")
    if rec["renamed"]:
        shown = ", ".join(f"{a} → {b}" for a, b in rec["renamed"][:3])
        more = f" and {len(rec['renamed']) - 3} more" if len(rec["renamed"]) > 3 else ""
        click.echo(f"  renamed      {shown}{more} (names are stored as the files decompress writes, unique)")


@click.command(name="compress")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--out", type=click.Path(dir_okay=False), required=True, help="Compressed file to write.")
@prior_option
@steps_option(CODEC_STEPS, "Chain steps K.")
@click.option("--spacing", type=click.Choice([s.value for s in Spacing]), default=CODEC_SPACING.value, show_default=True)
@click.option("--grid", type=float, default=DEFAULT_GRID, show_default=True, help="Latent grid points per std (G).")
@click.option("--threads", type=click.IntRange(min=0, max=255), default=1, show_default=True,
              help="torch threads for the network; recorded, the decoder uses the same (0 = current).")
@click.option("--max-batch", type=click.IntRange(min=1, max=65535), default=DEFAULT_MAX_BATCH, show_default=True)
@coding_engine_option(auto_names(AUTO_CODING_ENGINE) + " (README, Engines; onnxruntime on a CPU without bf16 "
                      "units, float32 without onnxruntime).")
@click.option("--no-vlb", is_flag=True, help="Skip the VLB comparison (saves one pass of network evaluations).")
@device_option
@json_option
@one_line_errors
def compress_cmd(inputs, out, prior_path, steps, spacing, grid, threads, max_batch, engine, no_vlb, device, as_json):
    """Losslessly compress images (PNG files, folders, .npy/.npz, fashion-mnist:test) into one file."""
    from diffcodec.coding.lossless import CodecParams, compress
    from diffcodec.data import load_many
    from diffcodec.files import atomic_write, check_output_file

    check_output_file(out)
    if prior_path is None:  # the input picks the embedded prior
        data = load_many(list(inputs))
        prior, _ = open_prior(None, device, channels=data.shape[0], quiet=as_json)
    else:
        prior, _ = open_prior(prior_path, device)
        data = load_many(list(inputs), channels=prior.image_shape[0])  # the error names the first file that does not fit
    params = CodecParams(steps=steps, spacing=Spacing(spacing), grid=grid, threads=threads, max_batch=max_batch,
                         engine=Engine(engine))
    params = params.resolved(prior)
    blob, stats = compress(prior, data.images, data.names, params, progress=True)
    atomic_write(out, blob)
    rec = compress_record(prior, data.images, stats, params, out, len(blob), with_vlb=not no_vlb)
    rec["renamed"] = [[a, b] for a, b in zip(data.names, stats.names) if a != b]
    if as_json:
        emit_json(rec)
    else:
        print_compress(rec)


@click.command(name="decompress")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True, help="Output folder (created if missing).")
@click.option("--npy", is_flag=True, help="Write one images.npy [N, C, H, W] instead of PNG files.")
@click.option("--force", is_flag=True, help="Overwrite files of the same names in the output folder.")
@prior_option
@device_option
@decoding_engine_option
@json_option
@one_line_errors
def decompress_cmd(file, out, npy, force, prior_path, device, engine, as_json):
    """Decompress a file written by `diffcodec compress` (bit-exact, or an error and nothing written).

    Existing files are never overwritten without --force (checked before decoding); the images are
    written to a temporary folder and moved into place only once all of them are written.
    """
    from diffcodec.coding.container import unpack
    from diffcodec.files import check_output_folder, staged_folder

    if not Path(file).is_file():
        raise ValueError(f"{file}: no such file")
    blob = Path(file).read_bytes()
    header, _ = unpack(blob)  # every field checked, names unique: before any work (and before torch loads)
    targets = ["images.npy"] if npy else header.names
    check_output_folder(out, targets, overwrite=force)

    import numpy as np

    from diffcodec.coding.lossless import decompress
    from diffcodec.images import write_image

    prior, _ = open_prior(prior_path, device, file_header=header, quiet=as_json)
    images, names, stats = decompress(prior, blob, progress=True, engine=engine)
    with staged_folder(out, targets, overwrite=force) as tmp:
        if npy:
            np.save(tmp / "images.npy", images, allow_pickle=False)
        else:
            for name, image in zip(names, images):
                write_image(tmp / name, image)
    record = {"images": len(images), "out": str(out), "files": targets, "decode_seconds": stats.seconds,
              "coder_share": stats.coder_share, "engine": stats.engine.value}
    if as_json:
        emit_json(record)
        return
    click.echo(f"decoded {len(images)} image{'s' * (len(images) != 1)} into {out} ({stats.seconds:.1f} s, engine {stats.engine.value}, "
               f"bit-exact: checksums of pixels and names verified)")
