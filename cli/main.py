"""The `diffcodec` command group.

Commands are registered lazily: :data:`COMMANDS` maps each command name to "module:attribute" of its
click command, and :class:`LazyGroup` imports that module only when the command is looked up.
Command modules keep their top level light (click and the numpy-level modules such as
``diffcodec.defaults``) and import torch and the library's heavy modules inside the command body,
so that ``diffcodec --help`` and ``diffcodec CMD --help`` answer at once (tests/test_cli_core.py
checks that ``--help`` imports no torch). A new command is one more row in the table.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

COMMANDS: dict[str, str] = {
    "sample": "diffcodec_cli.sample:sample",
    "info": "diffcodec_cli.sample:info",
    "nll": "diffcodec_cli.nll:nll",
    "compress": "diffcodec_cli.codec:compress_cmd",
    "decompress": "diffcodec_cli.codec:decompress_cmd",
    "train": "diffcodec_cli.train:train",
}

# The progressive codec's commands (cli/progressive.py), registered the same way once that module
# exists, so the command line keeps working without it.
if importlib.util.find_spec("diffcodec_cli.progressive") is not None:
    COMMANDS["encode"] = "diffcodec_cli.progressive:encode_cmd"
    COMMANDS["decode"] = "diffcodec_cli.progressive:decode_cmd"


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2: prints help, not an error


class LazyGroup(click.Group):
    """A click group whose commands come from a name → "module:attribute" table, imported on use."""

    def __init__(self, *args, lazy_commands: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def invoke(self, ctx):
        """Run the command; a bad flag or argument gives one line, like every other error (SPEC §7)."""
        try:
            return super().invoke(ctx)
        except _NO_ARGS_IS_HELP:
            raise
        except click.UsageError as err:
            name = err.ctx.command_path if err.ctx is not None else ctx.command_path
            raise click.ClickException(f"{err.format_message()} (see '{name} --help')") from None

    def get_command(self, ctx, name: str):
        target = self.lazy_commands.get(name)
        if target is None:
            return super().get_command(ctx, name)
        module, attribute = target.split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffcodec")
def main():
    """diffcodec: likelihoods and compression with DDPM diffusion priors.

    Every command uses the embedded Fashion-MNIST prior unless --prior names another.
    """


if __name__ == "__main__":
    main()
