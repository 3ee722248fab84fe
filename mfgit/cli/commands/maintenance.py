"""fsck, gc and reflog."""

from __future__ import annotations

import click

from mfgit.cli import errors as cli_errors
from mfgit.cli.common import emit_json, open_repo, quiet_blas
from mfgit.cli.progress import progress_bar
from mfgit.render import text as render


@click.command()
@click.option("--read-data", is_flag=True, help="Decode every object and check its SHA-256.")
@click.option("--repair-from", "repair_from", metavar="REMOTE", default=None,
              help="Replace missing and corrupt objects with REMOTE's verified copies.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/json.md).")
@click.pass_context
def fsck(ctx, read_data, repair_from, quiet, as_json):
    """Check the repository: missing, corrupt and dangling objects, bad refs."""
    quiet_blas()
    repo = open_repo(ctx)
    with progress_bar("checking objects", quiet=quiet or as_json) as progress:
        report = repo.fsck(read_data=read_data, repair_from=repair_from,
                           progress=progress if repair_from is None else None)
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
@click.option("--prune", default="2w", show_default=True,
              help="Delete unreachable objects and private copies older than this (now, 3600, 2h, 14d, 2w).")
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def gc(ctx, prune, dry_run, quiet, as_json):
    """Delete objects, and kept private attachments, that no ref or reflog entry reaches."""
    repo = open_repo(ctx)
    with progress_bar("sweeping objects", quiet=quiet or as_json) as progress:
        report = repo.gc(prune_older_than=_parse_duration(prune), dry_run=dry_run, progress=progress)
    if as_json:
        report = dict(report)
        emit_json(report)
    else:
        verb = "Would delete" if dry_run else "Deleted"
        click.echo(f"{verb} {report['deleted']} unreachable object(s), {render.human_bytes(report['bytes_freed'])}; "
                   f"kept {report['kept_unreachable_young']} younger than the grace period.")
        if report["private_deleted"] or report["private_kept_young"]:
            click.echo(f"{verb} {report['private_deleted']} private attachment file(s) no reachable commit names, "
                       f"{render.human_bytes(report['private_bytes_freed'])}; "
                       f"kept {report['private_kept_young']} younger than the grace period.")


class _ReflogGroup(click.Group):
    """``mfgit reflog [REF]`` shows, as ``git reflog`` does: a first word that is no subcommand means show."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_ReflogGroup)
def reflog():
    """Show or expire the reflog: every move of a ref (mfgit reflog [REF] shows one)."""


@reflog.command("show")
@click.argument("ref", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/json.md).")
@click.pass_context
def reflog_show(ctx, ref, as_json):
    """List REF's reflog (default: the current branch), newest first, as REF@{N}."""
    data = open_repo(ctx).reflog(ref)
    if as_json:
        emit_json(data)
    else:
        click.echo(render.reflog_text(data), nl=False)


@reflog.command("expire")
@click.argument("refs", nargs=-1)
@click.option("--all", "all_refs", is_flag=True, help="Every reflog, not only the REFs named.")
@click.option("--missing", is_flag=True,
              help="Drop entries from which a missing or unreadable object no ref reaches can be reached.")
@click.option("--malformed", is_flag=True, help="Drop damaged lines (not UTF-8, not an entry).")
@click.option("--older-than", "older_than", metavar="DURATION", default=None,
              help="Drop entries older than this (3600, 2h, 90d, 2w, now).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def reflog_expire(ctx, refs, all_refs, missing, malformed, older_than, as_json):
    """Drop reflog entries; what only they kept alive, gc may then delete."""
    if not (missing or malformed or older_than is not None):
        raise click.UsageError("say what to drop: --missing, --malformed and/or --older-than DURATION")
    if not refs and not all_refs:
        raise click.UsageError("name the refs (e.g. main, HEAD) or pass --all")
    age = _parse_duration(older_than) if older_than is not None else None
    data = open_repo(ctx).reflog_expire(list(refs), all_refs=all_refs, missing=missing, malformed=malformed,
                                        older_than=age)
    if as_json:
        emit_json(data)
    else:
        click.echo(render.reflog_expire_text(data), nl=False)


COMMANDS = [fsck, gc, reflog]
