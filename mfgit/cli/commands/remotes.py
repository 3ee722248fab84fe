"""remote, push, fetch, pull, clone."""

from __future__ import annotations

from pathlib import Path

import click

from mfgit.cli.common import emit_json, open_repo, quiet_blas
from mfgit.cli.progress import byte_progress
from mfgit.render import text as render
from mfgit.render.escape import terminal

TIMEOUT_HELP = ("S3: seconds one operation may take, retries included (default: remote.NAME.timeout, else 120); "
                "see docs/remotes.md.")
_SECONDS = click.FloatRange(min=0, min_open=True)


@click.group(invoke_without_command=True)
@click.option("-v", "--verbose", is_flag=True, help="Show URLs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def remote(ctx, verbose, as_json):
    """Manage remotes (shared folders or S3-compatible storage)."""
    if ctx.invoked_subcommand is not None:
        return
    repo = open_repo(ctx)
    items = repo.remotes()
    if as_json:
        emit_json({"remotes": items})
        return
    for r in items:
        if verbose:
            extra = "".join(f" {k}={terminal(r[k])}" for k in ("endpoint", "region", "profile", "timeout",
                                                              "connectTimeout") if k in r)
            click.echo(f"{terminal(r['name'])}\t{terminal(r['url'])}{extra} (fetch)")
            click.echo(f"{terminal(r['name'])}\t{terminal(r['url'])}{extra} (push)")
        else:
            click.echo(terminal(r["name"]))


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--endpoint", default=None, help="S3 endpoint URL (e.g. http://127.0.0.1:8333 for MinIO/SeaweedFS).")
@click.option("--region", default=None, help="S3 region.")
@click.option("--profile", default=None, help="AWS profile holding the credentials.")
@click.pass_context
def remote_add(ctx, name, url, endpoint, region, profile):
    """Add remote NAME at URL (a path, file:///path or s3://bucket/prefix)."""
    repo = open_repo(ctx)
    repo.remote_add(name, _remote_url(ctx, url), endpoint=endpoint, region=region, profile=profile)


@remote.command("remove")
@click.argument("name")
@click.pass_context
def remote_remove(ctx, name):
    """Remove remote NAME and its remote-tracking branches."""
    open_repo(ctx).remote_remove(name)


def _remote_url(ctx: click.Context, url: str) -> str:
    """URL checked; a path becomes absolute, relative to -C."""
    from mfgit.api.remotes import absolute_url

    return absolute_url(url, ctx.obj["cwd"])


def _transfer_bar(quiet: bool, label: str):
    return byte_progress(label, quiet=quiet)


def _transfer_summary(verb: str, report: dict) -> str:
    rate = report["bytes"] / report["seconds"] if report.get("seconds") else 0
    lines = []
    for r in report.get("refs", []):
        old = terminal((r.get("old") or "")[:10]) or "(new)"
        new = terminal((r.get("new") or "")[:10]) or "(deleted)"
        status = f" ({terminal(r['status'])})" if r.get("status") else ""
        lines.append(f"  {terminal(r['ref'])}: {old} -> {new}{status}")
    lines.append(f"{verb} {report['objects']} object(s), {render.human_bytes(report['bytes'])} "
                 f"in {report['seconds']:.2f} s ({render.human_bytes(rate)}/s); {report.get('skipped', 0)} already there")
    return "\n".join(lines)


@click.command()
@click.argument("remote_name")
@click.argument("refspecs", nargs=-1)
@click.option("-f", "--force", is_flag=True, help="Allow a non-fast-forward update (overwrites the remote branch).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--notes", is_flag=True, help="Also send the notes (metrics, refs/notes/metrics); alone: only the notes.")
@click.option("--create", is_flag=True,
              help="Make REMOTE a new remote if it is an empty folder or S3 prefix (never a non-empty one).")
@click.option("--timeout", type=_SECONDS, default=None, metavar="SECONDS", help=TIMEOUT_HELP)
@click.pass_context
def push(ctx, remote_name, refspecs, force, quiet, as_json, notes, create, timeout):
    """Send branches to REMOTE (an mfgit remote; --create makes an empty one): objects, then the ref by compare-and-swap."""
    from mfgit.api import remotes

    repo = open_repo(ctx)
    report = None
    if refspecs or not notes:
        with _transfer_bar(quiet or as_json, "push") as progress:
            report = repo.push(remote_name, list(refspecs) or None, force=force, progress=progress, create=create,
                               timeout=timeout)
    notes_report = remotes.push_notes(repo, remote_name, create=create, timeout=timeout) if notes else None
    if as_json:
        emit_json({**(report or {}), **({"notes": notes_report} if notes else {})})
    elif not quiet:
        if report is not None:
            click.echo(_transfer_summary("Sent", report))
        if notes_report is not None:
            click.echo(render.notes_transfer_text("push", notes_report))


@click.command()
@click.argument("remote_name")
@click.argument("branches", nargs=-1)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--notes", is_flag=True, help="Also fetch the notes (metrics) and union them into ours.")
@click.option("--timeout", type=_SECONDS, default=None, metavar="SECONDS", help=TIMEOUT_HELP)
@click.pass_context
def fetch(ctx, remote_name, branches, quiet, as_json, notes, timeout):
    """Download new commits of REMOTE's branches into refs/remotes/REMOTE/*."""
    from mfgit.api import remotes

    quiet_blas()
    repo = open_repo(ctx)
    with _transfer_bar(quiet or as_json, "fetch") as progress:
        report = repo.fetch(remote_name, branches=list(branches) or None, progress=progress, timeout=timeout)
    notes_report = remotes.fetch_notes(repo, remote_name, timeout=timeout) if notes else None
    if as_json:
        emit_json({**report, **({"notes": notes_report} if notes else {})})
    elif not quiet:
        click.echo(_transfer_summary("Received", report))
        if notes_report is not None:
            click.echo(render.notes_transfer_text("fetch", notes_report))


@click.command()
@click.argument("remote_name")
@click.argument("branch", required=False)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--timeout", type=_SECONDS, default=None, metavar="SECONDS", help=TIMEOUT_HELP)
@click.pass_context
def pull(ctx, remote_name, branch, quiet, as_json, timeout):
    """Fetch REMOTE's BRANCH and fast-forward the current branch to it."""
    quiet_blas()
    repo = open_repo(ctx)
    with _transfer_bar(quiet or as_json, "pull") as progress:
        report = repo.pull(remote_name, branch, progress=progress, timeout=timeout)
    if as_json:
        emit_json(report)
    elif not quiet:
        click.echo(_transfer_summary("Received", report))
        click.echo(f"{report['merge']}: HEAD at {terminal(str(report['head'])[:10])}")


@click.command()
@click.argument("url")
@click.argument("directory", required=False)
@click.option("--endpoint", default=None, help="S3 endpoint URL.")
@click.option("--region", default=None, help="S3 region.")
@click.option("--profile", default=None, help="AWS profile.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--timeout", type=_SECONDS, default=None, metavar="SECONDS", help=TIMEOUT_HELP)
@click.pass_context
def clone(ctx, url, directory, endpoint, region, profile, quiet, as_json, timeout):
    """Copy the repository at URL into DIRECTORY, with its branches as origin/*."""
    quiet_blas()
    from mfgit.api import remotes

    cwd = Path(ctx.obj["cwd"])
    url = _remote_url(ctx, url)
    if directory is None:
        directory = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".mfgit") or "repository"
    with _transfer_bar(quiet or as_json, "clone") as progress:
        repo, report = remotes.clone(url, cwd / directory, s3={"endpoint": endpoint, "region": region, "profile": profile},
                                     progress=progress, timeout=timeout)
    if as_json:
        emit_json(report)
    elif not quiet:
        click.echo(f"Cloned into {terminal(cwd / directory)}")
        click.echo(_transfer_summary("Received", report))


COMMANDS = [remote, push, fetch, pull, clone]
