"""fsck and gc."""

from __future__ import annotations


import click

from mfgit.cli import errors as cli_errors
from mfgit.cli.common import emit_json, open_repo, quiet_blas
from mfgit.render import text as render


@click.command()
@click.option("--read-data", is_flag=True, help="Decode every object and check its SHA-256.")
@click.option("--repair-from", "repair_from", metavar="REMOTE", default=None,
              help="Replace missing and corrupt objects with REMOTE's verified copies.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/json.md).")
@click.pass_context
def fsck(ctx, read_data, repair_from, as_json):
    """Check the repository: missing, corrupt and dangling objects, bad refs."""
    quiet_blas()
    repo = open_repo(ctx)
    report = repo.fsck(read_data=read_data, repair_from=repair_from)
    if as_json:
        emit_json(report)
    else:
        click.echo(render.fsck_text(report), nl=False)
    if not report["ok"]:
        ctx.exit(cli_errors.DAMAGED)


def _parse_duration(value: str) -> float:
    if value == "now":
        return 0.0
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    try:
        if value[-1] in units:
            return float(value[:-1]) * units[value[-1]]
        return float(value)
    except (ValueError, IndexError):
        raise click.BadParameter(f"{value!r}: use now, SECONDS or a number with s/m/h/d/w") from None


@click.command()
@click.option("--prune", default="2w", show_default=True, help="Delete unreachable objects older than this (now, 3600, 2h, 14d, 2w).")
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def gc(ctx, prune, dry_run, as_json):
    """Delete objects that no ref or reflog entry reaches."""
    repo = open_repo(ctx)
    report = repo.gc(prune_older_than=_parse_duration(prune), dry_run=dry_run)
    if as_json:
        report = dict(report)
        emit_json(report)
    else:
        verb = "Would delete" if dry_run else "Deleted"
        click.echo(f"{verb} {report['deleted']} unreachable object(s), {render.human_bytes(report['bytes_freed'])}; "
                   f"kept {report['kept_unreachable_young']} younger than the grace period.")


COMMANDS = [fsck, gc]
