"""The `diffcodec` command group."""

from __future__ import annotations

import click

from .codec import compress_cmd, decompress_cmd
from .nll import nll
from .sample import info, sample
from .train import train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffcodec")
def main():
    """diffcodec: likelihoods and compression with DDPM diffusion priors.

    Every command uses the embedded Fashion-MNIST prior unless --prior names another.
    """


main.add_command(sample)
main.add_command(info)
main.add_command(nll)
main.add_command(compress_cmd)
main.add_command(decompress_cmd)
main.add_command(train)

if __name__ == "__main__":
    main()
