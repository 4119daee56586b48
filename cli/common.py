"""Options and helpers shared by the commands: one-line errors, prior loading, JSON output.

Kept light (no torch at import time, see cli/main.py): heavy modules are imported inside the helpers.
"""

from __future__ import annotations

import functools
import json
import sys

import click

prior_option = click.option(
    "--prior",
    "prior_path",
    type=click.Path(),
    default=None,
    help="Prior file (.safetensors written by diffcodec) or a diffusers DDPM folder (UNet2DModel + DDPMScheduler, "
    "safetensors, read offline), or an embedded prior by name: fashion (grayscale 28x28 Fashion-MNIST) or photo "
    "(colour photographs, any size). Default: chosen from the input (grayscale → fashion, colour → photo; "
    "for a coded file, the prior that made it).",
)
device_option = click.option(
    "--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]. Figures in the README are CPU figures."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the human summary.")


def _engine_names() -> list[str]:
    from diffcodec.defaults import Engine

    return [e.value for e in Engine]


def auto_names(table: dict) -> str:
    """An auto-engine table as help text: 'onnxruntime on cpu, float32 on cuda'."""
    return ", ".join(f"{e.value} on {d}" for d, e in table.items())


def engine_option(what: str, after_auto: str):
    """--engine for a command that only evaluates the network (nll, sample, train's held-out figure)."""
    from diffcodec.defaults import AUTO_ENGINE

    return click.option(
        "--engine", type=click.Choice(_engine_names()), default="auto", show_default=True,
        help=f"How {what}. auto: {auto_names(AUTO_ENGINE)} {after_auto}",
    )


def coding_engine_option(auto_help: str):
    """--engine for a command that writes a coded file: the engine is recorded, the decoder runs the same."""
    return click.option(
        "--engine", type=click.Choice(_engine_names()), default="auto", show_default=True,
        help="How the network runs; recorded, the decoder runs the same. Coding engines: float32 (the reference), "
        "onnxruntime and mixed (both need pip install 'diffcodec[fast]'); the others are refused. "
        f"auto: {auto_help}",
    )


decoding_engine_option = click.option(
    "--engine", type=click.Choice(_engine_names()), default="auto", show_default=True,
    help="auto: the engine the file records (always what decoding runs); any other name must be that one, "
    "or decoding refuses.",
)


def steps_option(default: int | None, help: str):
    """--steps K, defined once so that every command checks it alike (K ≥ 1 here; K ≤ T by the prior)."""
    return click.option("--steps", type=click.IntRange(min=1), default=default, show_default=default is not None, help=help)


def one_line_errors(fn):
    """Turn expected failures (bad input, bad files) into a one-line 'Error: …' and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except (ValueError, OSError, EOFError) as err:
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise click.ClickException(msg) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def open_prior(prior_path: str | None, device: str, channels: int | None = None, file_header=None, quiet: bool = False):
    """(prior, device) for --prior, or without it the embedded prior the input calls for: by the
    input's ``channels`` (grayscale → fashion, colour → photo) or, for a coded file, the embedded
    prior its header matches (``file_header.matches_prior(digest)``; ValueError naming the file's
    digest when none does). Says which on stderr unless ``quiet``."""
    from diffcodec.checkpoint import embedded_prior_for_channels, embedded_prior_for_file, load_prior
    from diffcodec.runtime import resolve_device

    dev = resolve_device(device)
    if prior_path is None and (channels is not None or file_header is not None):
        if channels is not None:
            prior_path = embedded_prior_for_channels(channels)
            why = f"{'colour' if channels == 3 else 'grayscale'} input"
        else:
            prior_path = embedded_prior_for_file(file_header.matches_prior)
            why = "the file's prior"
            if prior_path is None:
                raise ValueError(f"file was made with a prior that is not embedded here (digest "
                                 f"{file_header.prior_digest[:16]}…); pass that prior with --prior")
        if prior_path is not None and not quiet:
            click.echo(f"prior: {prior_path} (embedded, chosen for {why}; --prior picks another)", err=True)
    return load_prior(prior_path, dev), dev


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False))


def seeded(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)
