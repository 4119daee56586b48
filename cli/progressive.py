"""`diffcodec encode` and `diffcodec decode`: progressive files, every prefix a picture, the whole file exact."""

from __future__ import annotations

import math
from pathlib import Path

import click

from diffcodec.defaults import CODEC_SPACING, CODEC_STEPS

from .common import (coding_engine_option, decoding_engine_option, device_option, emit_json, json_option, one_line_errors,
                     open_prior, prior_option, steps_option)

SUFFIX = ".dcp"
_TABLE_ROWS = 12  # steps shown in the text report (--json has all of them)


@click.command(name="encode")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--out", default=None,
              help=f"Output file (one image; default NAME{SUFFIX} in the current folder) or folder (several images).")
@prior_option
@steps_option(CODEC_STEPS, "Chain steps K (respaced from the prior's schedule).")
@click.option("--spacing", type=click.Choice(["even", "front"]), default=CODEC_SPACING.value, show_default=True)
@click.option("--psnr", "target_psnr", type=float, default=None,
              help="Stop the file after the first step whose reconstruction reaches this PSNR (dB).")
@click.option("--bytes", "target_bytes", type=click.IntRange(min=1), default=None,
              help="Stop the file at the last step that fits in this many bytes (header and checksum included).")
@click.option("--bpd", "target_bpd", type=float, default=None,
              help="Like --bytes, as bits per pixel and channel of the image.")
@click.option("--chunk-bits", type=float, default=10.0, show_default=True,
              help="Most KL per chunk (bits). Each chunk's index costs about 2 bits over its KL, and the search "
                   "2^(KL + margin) candidates (README: the measured table).")
@click.option("--margin", type=float, default=7.0, show_default=True,
              help="Candidates searched per chunk: 2^(KL + margin), at most 2^17. Larger: samples closer to q "
                   "(and smaller files), slower.")
@click.option("--merge-bits", type=float, default=16.0, show_default=True,
              help="Merge the noisiest steps until one transmission carries about this many bits (0: never).")
@click.option("--finish", type=click.Choice(["best", "end"]), default="best", show_default=True,
              help="Where the exact image follows the steps: best = from the step that gives the smallest file "
                   "(x_0 coded around the network's prediction); end = walk the chain to x_1, then P(x_0|x_1).")
@click.option("--threads", type=click.IntRange(min=1, max=255), default=1, show_default=True,
              help="torch threads for the network; recorded, the decoder uses the same.")
@coding_engine_option("float32 (encoding is search-bound: onnxruntime encodes 1.4x and decodes 1.8x as fast, "
                      "but its files need onnxruntime to decode; README, Engines).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Encode only the first N input images.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@device_option
@json_option
@one_line_errors
def encode_cmd(inputs, out, prior_path, steps, spacing, target_psnr, target_bytes, target_bpd, chunk_bits, margin,
               merge_bits, finish, threads, engine, limit, force, device, as_json):
    """Progressive coding of images, one file each (DDPM Algorithms 3 and 4).

    The file sends x_K, x_{K-1}, ... as samples of q by reverse channel coding against the prior,
    then the exact pixels from the step where they cost least (--finish). Any prefix of it decodes to
    a reconstruction; the whole file to the exact image. With --psnr, --bytes or --bpd the file stops
    early (a lossy file), unless the exact file is no larger.

    INPUTS: image files (PNG, ...), folders, .npy/.npz, or fashion-mnist:test.
    """
    if sum(t is not None for t in (target_psnr, target_bytes, target_bpd)) > 1:
        raise click.UsageError("give at most one of --psnr, --bytes and --bpd")
    from diffcodec.coding.progressive import ProgressiveParams, Target, encode
    from diffcodec.files import atomic_write
    from diffcodec.schedule import Spacing

    prior = open_prior(prior_path, device)[0] if prior_path is not None else None
    images, names = _load_each(inputs, limit, None if prior is None else prior.image_shape[0])
    targets = _output_paths(out, names, force)
    if prior is None:  # the input picks the embedded prior
        channels = {im.shape[0] for im in images}
        if len(channels) > 1:
            raise ValueError("grayscale and colour inputs together: encode them in separate calls (each picks its prior), or pass --prior")
        prior, _ = open_prior(None, device, channels=channels.pop(), quiet=as_json)
    params = ProgressiveParams(steps=steps, spacing=Spacing(spacing), chunk_bits=chunk_bits, merge_bits=merge_bits,
                               margin=margin, threads=threads, finish=finish, engine=engine).resolved(prior)
    records = []
    for image, name, path in zip(images, names, targets):
        dims = int(image.size)
        max_bytes = target_bytes if target_bpd is None else max(1, math.floor(target_bpd * dims / 8))
        result = encode(prior, image, params, Target(psnr=target_psnr, max_bytes=max_bytes), progress=not as_json)
        atomic_write(path, result.data)
        rec = {"input": name, "out": str(path), **result.to_dict(), **result.fidelity(), "prior_digest": prior.digest}
        records.append(rec)
        if not as_json:
            _report(rec, dims)
    if as_json:
        emit_json(records[0] if len(records) == 1 else {"files": records})


def _load_each(inputs, limit: int | None, channels: int | None) -> tuple[list, list[str]]:
    """Every input image ([C, H, W] uint8) and its name; inputs may differ in size (one file each).
    With ``channels``, an input of another channel count is refused naming its file (data.check_fits)."""
    from diffcodec.data import load_images

    images, names = [], []
    for spec in inputs:
        data = load_images(spec, channels)
        images += list(data.images)
        names += list(data.names)
    return images[:limit], names[:limit]


def _output_paths(out: str | None, names: list[str], force: bool) -> list[Path]:
    """Every output path, checked before any work (writable, and not overwritten unless ``force``)."""
    paths = _plan_paths(out, names)
    if not force:
        for p in paths:
            _refuse_existing(p)
    return paths


def _refuse_existing(path: Path) -> None:
    if path.exists():
        raise ValueError(f"{path}: already exists; pass --force to overwrite")


def _plan_paths(out: str | None, names: list[str]) -> list[Path]:
    from diffcodec.files import check_output_file

    stems = [Path(n).stem or "image" for n in names]
    if len(names) == 1:
        path = Path(out) if out is not None and not Path(out).is_dir() else Path(out or ".") / (stems[0] + SUFFIX)
        return [check_output_file(path)]
    folder = Path(out or ".")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{out}: several images need an output folder, not a file")
    if len(set(stems)) != len(stems):
        raise ValueError("two inputs share a file name; encode them into different folders")
    folder.mkdir(parents=True, exist_ok=True)
    return [check_output_file(folder / (s + SUFFIX)) for s in stems]


def _report(rec: dict, dims: int) -> None:
    steps = [s for s in rec["steps"] if s["in_file"]]  # --json also has the states walked past the exact end
    last = steps[-1]
    kind = (f"lossless, exact pixels after step {rec['exact_from_step']}" if rec["lossless"]
            else f"lossy, stopped after {last['n']} of {rec['total_steps']} steps")
    click.echo(f"wrote {rec['out']}: {rec['file_bytes']:,} bytes, {rec['bits_per_dim']:.3f} bits/dim ({kind}; "
               f"{rec['seconds']:.1f} s, network {rec['network_seconds']:.1f} s)")
    click.echo("   step      t     file bytes   bits/dim   KL bits/dim    PSNR dB")
    pick = sorted(set(round(i) for i in _spread(len(steps), _TABLE_ROWS)))
    for i in pick:
        s = steps[i]
        shown = "exact" if s["psnr"] is None else f"{s['psnr']:.2f}"
        click.echo(f"  {s['n']:5d}  {s['t']:5d}   {s['file_bytes']:12,d}   {s['bits_per_dim']:8.3f}   "
                   f"{s['kl_bits'] / dims:11.3f}   {shown:>8}")
    walked = [s["n"] for s in rec["steps"] if not s["in_file"]]
    if walked:
        click.echo(f"  (steps {walked[0]}-{walked[-1]} were walked to find the cheapest exact end; "
                   f"--psnr or --bytes files can stop there)")
    fid = rec.get("fidelity_slope")
    if fid is not None:
        click.echo(f"  samples vs q: slope {fid:.3f}, z mean {rec['fidelity_z_mean']:+.3f}, z variance {rec['fidelity_z_var']:.3f}")


def _spread(n: int, k: int):
    """min(n, k) positions spread evenly over 0..n−1, first and last included."""
    m = min(n, k)
    return [i * (n - 1) / max(m - 1, 1) for i in range(m)]


@click.command(name="decode")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--out", default=None, help="Output PNG (default: FILE with .png in the current folder).")
@click.option("--step", "upto", type=click.IntRange(min=0), default=None, help="Decode only the first STEP steps.")
@click.option("--bytes", "prefix_bytes", type=click.IntRange(min=1), default=None,
              help="Decode the longest prefix that fits in this many bytes.")
@click.option("--all-steps", "all_dir", default=None, help="Also write the reconstruction after every decoded step into this folder.")
@click.option("--recon", type=click.Choice(["mean", "sample"]), default="mean", show_default=True,
              help="mean: x̂_0 of the last decoded latent (best PSNR); sample: finish the chain by ancestral sampling.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@prior_option
@device_option
@decoding_engine_option
@json_option
@one_line_errors
def decode_cmd(file, out, upto, prefix_bytes, all_dir, recon, force, prior_path, device, engine, as_json):
    """Decode a progressive file (or any prefix of it) written by `diffcodec encode`.

    A cut file decodes to its last complete step (with a note that it is partial); a complete file
    is checked against its checksum and gives the exact image, or an error and nothing written.
    """
    if not Path(file).is_file():
        raise ValueError(f"{file}: no such file")
    from diffcodec.coding import progressive_file as pf
    from diffcodec.coding.progressive import decode
    from diffcodec.files import check_output_file, check_output_folder
    from diffcodec.images import write_image

    blob = Path(file).read_bytes()
    if prefix_bytes is not None:
        blob = blob[:prefix_bytes]
    header = pf.unpack(blob)[0]  # not a progressive file: say so before anything about the output
    target = check_output_file(out if out is not None else Path(file).with_suffix(".png").name)
    if not force:
        _refuse_existing(target)
    if all_dir is not None:
        check_output_folder(all_dir, [], overwrite=force)
    prior, _ = open_prior(prior_path, device, file_header=header, quiet=as_json)
    res = decode(prior, blob, steps=upto, keep_intermediates=all_dir is not None, recon=recon, progress=not as_json,
                 engine=engine)
    if all_dir is not None:
        names = [f"step-{n:04d}.png" for n, _ in res.intermediates]
        folder = check_output_folder(all_dir, names, overwrite=force)
        folder.mkdir(parents=True, exist_ok=True)
        for name, (_, img) in zip(names, res.intermediates):
            write_image(folder / name, img)
    write_image(target, res.image)
    rec = {"out": str(target), "steps_decoded": res.steps_decoded, "total_steps": res.total_steps,
           "lossless": res.lossless, "complete": res.complete, "partial": not res.complete and upto is None, "bytes_read": len(blob), "recon": recon,
           "seconds": res.seconds, "engine": res.engine}
    if as_json:
        emit_json(rec)
        return
    if res.lossless:
        what = "the exact image (checksum verified)"
    else:
        what = f"the reconstruction after {res.steps_decoded} of {res.total_steps} steps ({recon})"
    click.echo(f"wrote {target}: {what}, {res.seconds:.1f} s")
    if rec["partial"]:
        click.echo(f"note: the file is partial ({len(blob):,} of {res.header.total_bytes:,} bytes); "
                   f"decoded up to its last complete step")
