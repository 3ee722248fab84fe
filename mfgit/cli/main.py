"""The `mfgit` command: the group, the one error handler, and the commands of mfgit.cli.commands.

Each command parses its options, calls one API function and renders the
result; every error goes through the one table in mfgit.cli.errors.
"""

from __future__ import annotations

import os
from typing import Any

import click

from mfgit.cli import errors as cli_errors
from mfgit.cli.commands import audit, demo, maintenance, merging, notes, remotes, repository


class MfgitGroup(click.Group):
    """Maps every error to one line and an exit code (mfgit.cli.errors)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("mfgit: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # noqa: BLE001 - this is the one place errors are rendered
            if os.environ.get("MFGIT_DEBUG"):
                raise
            code, line = cli_errors.lookup(exc)
            click.echo(line, err=True)
            ctx.exit(code)


@click.group(cls=MfgitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-C", "cwd", default=".", metavar="PATH", help="Run as if mfgit was started in PATH.")
@click.version_option(package_name="mfgit", prog_name="mfgit")
@click.pass_context
def cli(ctx: click.Context, cwd: str) -> None:
    """mfgit: version control for LoRA adapters."""
    ctx.obj = {"cwd": cwd}


for _module in (repository, maintenance, merging, remotes, demo, audit, notes):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="mfgit")


if __name__ == "__main__":  # pragma: no cover
    main()
