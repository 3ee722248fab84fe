"""The `mfgit` command. Each command parses, calls one API function, renders."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from mfgit.cli import errors as cli_errors
from mfgit.cli import render


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


def _quiet_blas() -> None:
    """For commands that move tensor bytes and do no linear algebra.

    numpy (the byte planes of stored tensors) loads OpenBLAS, whose worker
    threads busy-wait after start-up: on a small machine they take a core
    from hashing and compression, which these commands never give back.
    Set before numpy loads, so it lasts for the process; a user's own
    setting wins. Not for merge, search, eval or demo, which do use BLAS.
    """
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _repo(ctx: click.Context):
    from mfgit.api.repository import Repository

    return Repository.open(ctx.obj["cwd"])


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


@click.group(cls=MfgitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-C", "cwd", default=".", metavar="PATH", help="Run as if mfgit was started in PATH.")
@click.version_option(package_name="mfgit", prog_name="mfgit")
@click.pass_context
def cli(ctx: click.Context, cwd: str) -> None:
    """mfgit: version control for LoRA adapters."""
    ctx.obj = {"cwd": cwd}


@cli.command()
@click.argument("path", default=".", required=False)
@click.option("--bare", is_flag=True, help="Create a bare repository (for sharing as a remote).")
@click.option("--site", default=None, help="The institution this repository belongs to (config user.site).")
@click.option("-b", "--initial-branch", default="main", show_default=True, help="Name of the first branch.")
@click.pass_context
def init(ctx, path, bare, site, initial_branch):
    """Create an empty repository in PATH."""
    from mfgit.api.repository import Repository

    target = Path(ctx.obj["cwd"]) / path
    repo = Repository.init(target, bare=bare, site=site, initial_branch=initial_branch)
    click.echo(f"Initialized empty {'bare ' if bare else ''}mfgit repository in {repo.gitdir}")


@cli.command()
@click.argument("key", required=False)
@click.argument("value", required=False)
@click.option("--global", "global_", is_flag=True, help="Use the user's file instead of the repository's.")
@click.option("--unset", is_flag=True, help="Remove KEY.")
@click.option("-l", "--list", "list_", is_flag=True, help="List all settings.")
@click.pass_context
def config(ctx, key, value, global_, unset, list_):
    """Get or set options: user.name, user.email, site, remote.NAME.url, ..."""
    from mfgit.api.config import Config

    if global_:
        cfg = Config(Path(os.devnull))
    else:
        cfg = _repo(ctx).config
    scope = "global" if global_ else "repo"
    if list_ or key is None:
        items = cfg.global_file.items() if global_ else cfg.items()
        for k, v in sorted(items.items()):
            click.echo(f"{k}={v}")
        return
    if unset:
        cfg.set(key, None, scope=scope)
        return
    if value is None:
        v = cfg.global_file.get(key) if global_ else cfg.get(key)
        if v is None:
            ctx.exit(1)
        click.echo(v)
        return
    cfg.set(key, value, scope=scope)


@cli.command()
@click.argument("adapter", type=click.Path())
@click.option("-m", "--message", required=True, help="Commit message.")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Record metadata (repeatable), e.g. samples=1200.")
@click.option("--code", type=click.Path(), default=None, help="Git work tree of the training code (default: the one holding ADAPTER).")
@click.option("--allow-pickle", is_flag=True, help="Accept adapter_model.bin (loaded with torch weights_only=True).")
@click.option("--allow-empty", is_flag=True, help="Commit even if the adapter equals HEAD's.")
@click.option("--json", "as_json", is_flag=True, help="Print the new commit as JSON.")
@click.option("-S", "--sign", is_flag=True, help="Sign the commit with the key in config signing.key (docs/audit.md).")
@click.pass_context
def commit(ctx, adapter, message, meta, code, allow_pickle, allow_empty, as_json, sign):
    """Record the PEFT adapter directory ADAPTER as a new commit."""
    _quiet_blas()
    repo = _repo(ctx)
    cwd = Path(ctx.obj["cwd"])  # relative paths are relative to -C PATH, as for every command
    info = repo.commit(cwd / adapter, message, meta=list(meta), code=(cwd / code) if code else None,
                       allow_pickle=allow_pickle, allow_empty=allow_empty, sign=repo.signer() if sign else None)
    if as_json:
        _emit_json(info.to_dict())
    else:
        branch = repo.head_branch() or "detached HEAD"
        root = " (root-commit)" if not info.commit.parents else ""
        click.echo(f"[{branch}{root} {info.id[:10]}] {message.splitlines()[0] if message else ''}")


@cli.command()
@click.argument("rev", default="HEAD", required=False)
@click.option("-n", "--max-count", type=int, default=None, help="Show at most N commits.")
@click.option("--graph", is_flag=True, help="Draw the commit graph.")
@click.option("--oneline", is_flag=True, help="One line per commit.")
@click.option("--first-parent", is_flag=True, help="Follow only the first parent of merges.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/json.md).")
@click.pass_context
def log(ctx, rev, max_count, graph, oneline, first_parent, as_json):
    """Show the history of REV (or A..B: in B but not in A)."""
    repo = _repo(ctx)
    commits = repo.log(rev, n=max_count, first_parent=first_parent)
    decorations = render.decorations(repo)
    notes = render.notes_by_commit(repo, [c.id for c in commits])
    if as_json:
        _emit_json({"commits": [render.commit_json(c, decorations, notes) for c in commits]})
        return
    click.echo(render.log_text(commits, decorations, graph=graph, oneline=oneline, notes=notes), nl=False)


@cli.command()
@click.argument("rev", default="HEAD", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/json.md).")
@click.pass_context
def show(ctx, rev, as_json):
    """Show a commit: message, provenance and adapter summary."""
    repo = _repo(ctx)
    data = repo.show(rev)
    notes = render.notes_by_commit(repo, [data["id"]]).get(data["id"])
    if notes:
        data["notes"] = notes
    if as_json:
        _emit_json(data)
    else:
        click.echo(render.show_text(data, render.decorations(repo)), nl=False)


@cli.command()
@click.argument("name", required=False)
@click.argument("start", required=False)
@click.option("-d", "--delete", "delete", is_flag=True, help="Delete NAME (must be merged into HEAD).")
@click.option("-D", "force_delete", is_flag=True, help="Delete NAME even if not merged.")
@click.option("-f", "--force", is_flag=True, help="Move NAME to START if it exists.")
@click.option("-r", "--remotes", is_flag=True, help="List remote-tracking branches.")
@click.option("-a", "--all", "all_", is_flag=True, help="List local and remote-tracking branches.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/json.md).")
@click.pass_context
def branch(ctx, name, start, delete, force_delete, force, remotes, all_, as_json):
    """List, create or delete branches."""
    repo = _repo(ctx)
    if delete or force_delete:
        if not name:
            raise click.UsageError("branch -d needs a NAME")
        oid = repo.delete_branch(name, force=force_delete)
        click.echo(f"Deleted branch {name} (was {oid[:10]}).")
        return
    if name:
        oid = repo.create_branch(name, start, force=force)
        click.echo(f"Branch {name} at {oid[:10]}")
        return
    local = [] if remotes else repo.branches()
    remote = repo.branches(remote=True) if (remotes or all_) else []
    if as_json:
        _emit_json({"current": repo.head_branch(), "branches": local, "remotes": remote})
        return
    for b in local:
        click.echo(f"{'*' if b['current'] else ' '} {b['name']:<24} {b['commit'][:10]} {b['subject']}")
    for b in remote:
        click.echo(f"  remotes/{b['name']:<16} {b['commit'][:10]} {b['subject']}")
    if not local and not remote and repo.head_branch():
        click.echo(f"(no commits yet on {repo.head_branch()})")


@cli.command()
@click.argument("name")
@click.argument("start", required=False)
@click.option("-c", "--create", is_flag=True, help="Create NAME (from START or HEAD) and switch to it.")
@click.option("--orphan", is_flag=True, help="Switch to a new branch with no history yet.")
@click.pass_context
def switch(ctx, name, start, create, orphan):
    """Make NAME the current branch (new commits go there)."""
    repo = _repo(ctx)
    repo.switch(name, create=create, orphan=orphan, start=start)
    click.echo(f"Switched to {'a new ' if create or orphan else ''}branch '{name}'")


@cli.command()
@click.argument("rev")
@click.option("--to", "to", required=True, type=click.Path(), help="Output directory (must be empty unless --force).")
@click.option("-f", "--force", is_flag=True, help="Write into a non-empty directory, replacing adapter files.")
@click.pass_context
def checkout(ctx, rev, to, force):
    """Write the adapter of REV as a PEFT adapter directory."""
    _quiet_blas()
    repo = _repo(ctx)
    out = repo.checkout(rev, Path(ctx.obj["cwd"]) / to, force=force)
    click.echo(f"Wrote {out}")


@cli.command()
@click.argument("name", required=False)
@click.argument("rev", required=False, default="HEAD")
@click.option("-m", "--message", default=None, help="Make an annotated tag with this message.")
@click.option("-f", "--force", is_flag=True, help="Replace an existing tag.")
@click.option("--json", "as_json", is_flag=True, help="List tags as JSON.")
@click.option("-s", "--sign", is_flag=True, help="Make a signed annotated tag with the key in config signing.key.")
@click.pass_context
def tag(ctx, name, rev, message, force, as_json, sign):
    """Name a commit (list tags without NAME)."""
    repo = _repo(ctx)
    if not name:
        tags = repo.tags()
        if as_json:
            _emit_json({"tags": tags})
        else:
            for t in tags:
                click.echo(t["name"])
        return
    repo.tag(name, rev, message=message, force=force, sign=repo.signer() if sign else None)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/json.md).")
@click.pass_context
def status(ctx, as_json):
    """Show the current branch, HEAD's adapter and the adapter directories committed from here."""
    repo = _repo(ctx)
    data = repo.status()
    if as_json:
        _emit_json(data)
    else:
        click.echo(render.status_text(data), nl=False)


@cli.command()
@click.option("--read-data", is_flag=True, help="Decode every object and check its SHA-256.")
@click.option("--repair-from", "repair_from", metavar="REMOTE", default=None,
              help="Replace missing and corrupt objects with REMOTE's verified copies.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/json.md).")
@click.pass_context
def fsck(ctx, read_data, repair_from, as_json):
    """Check the repository: missing, corrupt and dangling objects, bad refs."""
    _quiet_blas()
    repo = _repo(ctx)
    report = repo.fsck(read_data=read_data, repair_from=repair_from)
    if as_json:
        _emit_json(report)
    else:
        click.echo(render.fsck_text(report), nl=False)
    if not report["ok"]:
        ctx.exit(cli_errors.DAMAGED)


def _parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    from mfgit.api.provenance import parse_meta

    return parse_meta(list(items))


@cli.command()
@click.argument("revs", nargs=-1)
@click.option("-s", "--strategy", default=None, help="linear, task_arithmetic, svd, ties, dare_linear, dare_ties, breadcrumbs, della, magnitude_prune, tsv, iso_c (default linear).")
@click.option("--weights", default=None, metavar="W1,W2,...", help="One weight per revision, in order.")
@click.option("--weights-from", default=None, metavar="KEY", help="Weights proportional to commit metadata KEY (e.g. samples).")
@click.option("--density", type=float, default=None, help="Fraction kept (ties, magnitude_prune).")
@click.option("--drop-rate", type=float, default=None, help="Drop probability p (dare_*, della).")
@click.option("--lambda", "lambda_", type=float, default=None, help="Scale of the merged update (λ).")
@click.option("--param", "extra", multiple=True, metavar="NAME=VALUE", help="Any other strategy parameter (repeatable).")
@click.option("--rank", default=None, help="Output rank: N, sum, or max (default: the largest input rank).")
@click.option("--energy", type=float, default=None, help="Smallest rank per module keeping this fraction of energy.")
@click.option("--seed", type=int, default=None, help="Seed of every random mask (default 0).")
@click.option("--device", default=None, help="auto (default), cpu or cuda[:N].")
@click.option("--dtype", default=None, help="Output dtype (F32, BF16, F16); default: the inputs'.")
@click.option("-m", "--message", default=None, help="Commit message.")
@click.option("--recipe", type=click.Path(), default=None, help="Read the merge from a YAML recipe file.")
@click.option("--rebuild", is_flag=True, help="Re-merge all current leaves of the composite from scratch.")
@click.option("--no-commit", is_flag=True, help="Do not commit; write the result with --to.")
@click.option("--to", type=click.Path(), default=None, help="Also write the result as a PEFT adapter directory.")
@click.option("-f", "--force", is_flag=True, help="Overwrite a non-empty --to directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the result and provenance as JSON.")
@click.option("-S", "--sign", is_flag=True, help="Sign the merge commit with the key in config signing.key.")
@click.option("--search", type=click.Choice(["weights", "layer-weights"]), default=None,
              help="Search the weights (per revision, or per revision and layer) that minimise --score.")
@click.option("--score", default=None, metavar="MODULE:FUNC", help="Your score function (lower is better); see docs/search-and-eval.md.")
@click.option("--base", "base_spec", default=None, metavar="MODULE:FUNC", help="Base model factory (default: base_model() in the score module).")
@click.option("--data", "data_spec", default=None, metavar="MODULE:FUNC", help="Data loader (default: load_data() in the score module, if any).")
@click.option("--budget", type=int, default=None, help="Optimiser proposals to evaluate (default 40).")
@click.option("--bounds", default=None, metavar="LOW,HIGH", help="Bounds of every searched weight (default -1.5,1.5).")
@click.option("--l1", type=float, default=None, help="L1 penalty on the searched weights (default 0; MedForge uses 0.05).")
@click.option("--candidates", type=int, default=None, metavar="N", help="Publish N candidate composites on candidates/<round>/<k> for the sites to evaluate.")
@click.option("--from-candidates", default=None, metavar="ROUND", help="Commit the candidate of ROUND chosen by the sites' notes (--select-by).")
@click.option("--select-by", default=None, metavar="NAME,...", help="Evaluation names (mfgit eval --name) to choose by.")
@click.option("--select-rule", type=click.Choice(["worst", "mean"]), default=None, help="Best worst-site score (default) or best mean.")
@click.pass_context
def merge(ctx, revs, strategy, weights, weights_from, density, drop_rate, lambda_, extra, rank, energy, seed,
          device, dtype, message, recipe, rebuild, no_commit, to, force, as_json, sign, search, score, base_spec,
          data_spec, budget, bounds, l1, candidates, from_candidates, select_by, select_rule):
    """Merge the adapters of REVS in weight space into the current branch."""
    repo = _repo(ctx)
    if score or search or from_candidates or candidates:
        _import_path(ctx)
    params = _parse_params(extra)
    for key, value in (("density", density), ("drop_rate", drop_rate), ("lambda", lambda_)):
        if value is not None:
            params[key] = value
    wlist = None
    if weights is not None:
        try:
            wlist = [float(w) for w in weights.split(",")]
        except ValueError:
            raise click.BadParameter(f"{weights!r}: give numbers separated by commas", param_hint="--weights") from None
    cwd = Path(ctx.obj["cwd"])
    with render.progress_bar("merging modules") as progress:
        report = repo.merge(
            list(revs), strategy=strategy, weights=wlist, weights_from=weights_from, params=params, rank=rank,
            energy=energy, seed=seed, device=device, dtype=dtype, message=message, no_commit=no_commit,
            to=(cwd / to) if to else None, rebuild=rebuild, force=force,
            recipe=(cwd / recipe) if recipe else None, progress=progress, sign=repo.signer() if sign else None,
            search=search, score=score, base=base_spec, data=data_spec, budget=budget, bounds=bounds, l1=l1,
            candidates=candidates, from_candidates=from_candidates, select_by=select_by, select_rule=select_rule,
        )
    if as_json:
        _emit_json(report.to_dict())
        return
    if getattr(report, "candidates", None) is not None:
        click.echo(render.candidates_text(report.to_dict()), nl=False)
        return
    prov = report.provenance
    if report.commit:
        click.echo(f"[{repo.head_branch() or 'detached HEAD'} {report.commit[:10]}] merged "
                   f"{len(prov['leaves'])} leaf/leaves with {prov['recipe']['strategy']} "
                   f"({prov['integration']['mode']}) on {prov['device']['type']}")
    if report.output_dir:
        click.echo(f"Wrote {report.output_dir}")
    e = prov["kept_energy"]
    click.echo(f"kept energy: min {e['min']:.4f}, mean {e['mean']:.4f}; {prov['wall_time_s']:.2f} s")
    if prov.get("search") or prov.get("selection"):
        click.echo(render.search_text(prov), nl=False)


@cli.group(invoke_without_command=True)
@click.option("-v", "--verbose", is_flag=True, help="Show URLs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def remote(ctx, verbose, as_json):
    """Manage remotes (shared folders or S3-compatible storage)."""
    if ctx.invoked_subcommand is not None:
        return
    repo = _repo(ctx)
    items = repo.remotes()
    if as_json:
        _emit_json({"remotes": items})
        return
    for r in items:
        if verbose:
            extra = "".join(f" {k}={r[k]}" for k in ("endpoint", "region", "profile") if k in r)
            click.echo(f"{r['name']}\t{r['url']}{extra} (fetch)")
            click.echo(f"{r['name']}\t{r['url']}{extra} (push)")
        else:
            click.echo(r["name"])


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--endpoint", default=None, help="S3 endpoint URL (e.g. http://127.0.0.1:8333 for MinIO/SeaweedFS).")
@click.option("--region", default=None, help="S3 region.")
@click.option("--profile", default=None, help="AWS profile holding the credentials.")
@click.pass_context
def remote_add(ctx, name, url, endpoint, region, profile):
    """Add remote NAME at URL (a path, file:///path or s3://bucket/prefix)."""
    repo = _repo(ctx)
    repo.remote_add(name, _remote_url(ctx, url), endpoint=endpoint, region=region, profile=profile)


@remote.command("remove")
@click.argument("name")
@click.pass_context
def remote_remove(ctx, name):
    """Remove remote NAME and its remote-tracking branches."""
    _repo(ctx).remote_remove(name)


def _remote_url(ctx: click.Context, url: str) -> str:
    """Validate URL (http://, ssh://, user@host:, bad buckets... are refused);
    a path becomes absolute, relative to -C."""
    from mfgit.remote.transport import parse_remote_url

    parsed = parse_remote_url(url, base=str(Path(ctx.obj["cwd"]).absolute()))
    return str(parsed.path) if parsed.scheme == "file" else url


def _transfer_bar(quiet: bool, label: str):
    return render.byte_progress(label, quiet=quiet)


def _transfer_summary(verb: str, report: dict) -> str:
    rate = report["bytes"] / report["seconds"] if report.get("seconds") else 0
    lines = []
    for r in report.get("refs", []):
        old = (r.get("old") or "")[:10] or "(new)"
        new = (r.get("new") or "")[:10] or "(deleted)"
        lines.append(f"  {r['ref']}: {old} -> {new}" + (f" ({r['status']})" if r.get("status") else ""))
    lines.append(f"{verb} {report['objects']} object(s), {render.human_bytes(report['bytes'])} "
                 f"in {report['seconds']:.2f} s ({render.human_bytes(rate)}/s); {report.get('skipped', 0)} already there")
    return "\n".join(lines)


@cli.command()
@click.argument("remote_name")
@click.argument("refspecs", nargs=-1)
@click.option("-f", "--force", is_flag=True, help="Allow a non-fast-forward update (overwrites the remote branch).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--notes", is_flag=True, help="Also send the notes (metrics, refs/notes/metrics); alone: only the notes.")
@click.pass_context
def push(ctx, remote_name, refspecs, force, quiet, as_json, notes):
    """Send branches to REMOTE: objects first, then the ref by compare-and-swap."""
    repo = _repo(ctx)
    report = None
    if refspecs or not notes:
        with _transfer_bar(quiet or as_json, "push") as progress:
            report = repo.push(remote_name, list(refspecs) or None, force=force, progress=progress)
    notes_report = repo.push_notes(remote_name) if notes else None
    if as_json:
        _emit_json({**(report or {}), **({"notes": notes_report} if notes else {})})
    elif not quiet:
        if report is not None:
            click.echo(_transfer_summary("Sent", report))
        if notes_report is not None:
            click.echo(render.notes_transfer_text("push", notes_report))


@cli.command()
@click.argument("remote_name")
@click.argument("branches", nargs=-1)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--notes", is_flag=True, help="Also fetch the notes (metrics) and union them into ours.")
@click.pass_context
def fetch(ctx, remote_name, branches, quiet, as_json, notes):
    """Download new commits of REMOTE's branches into refs/remotes/REMOTE/*."""
    _quiet_blas()
    repo = _repo(ctx)
    with _transfer_bar(quiet or as_json, "fetch") as progress:
        report = repo.fetch(remote_name, branches=list(branches) or None, progress=progress)
    notes_report = repo.fetch_notes(remote_name) if notes else None
    if as_json:
        _emit_json({**report, **({"notes": notes_report} if notes else {})})
    elif not quiet:
        click.echo(_transfer_summary("Received", report))
        if notes_report is not None:
            click.echo(render.notes_transfer_text("fetch", notes_report))


@cli.command()
@click.argument("remote_name")
@click.argument("branch", required=False)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.pass_context
def pull(ctx, remote_name, branch, quiet, as_json):
    """Fetch REMOTE's BRANCH and fast-forward the current branch to it."""
    _quiet_blas()
    from mfgit.api.remotes import DivergedBranches

    repo = _repo(ctx)
    try:
        with _transfer_bar(quiet or as_json, "pull") as progress:
            report = repo.pull(remote_name, branch, progress=progress)
    except DivergedBranches as e:
        click.echo(f"mfgit: {e} (merge them: mfgit merge {e.remote_branch}, then push)", err=True)
        ctx.exit(1)
    if as_json:
        _emit_json(report)
    elif not quiet:
        click.echo(_transfer_summary("Received", report))
        click.echo(f"{report['merge']}: HEAD at {str(report['head'])[:10]}")


@cli.command()
@click.argument("url")
@click.argument("directory", required=False)
@click.option("--endpoint", default=None, help="S3 endpoint URL.")
@click.option("--region", default=None, help="S3 region.")
@click.option("--profile", default=None, help="AWS profile.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.pass_context
def clone(ctx, url, directory, endpoint, region, profile, quiet, as_json):
    """Copy the repository at URL into DIRECTORY, with its branches as origin/*."""
    _quiet_blas()
    from mfgit.api import remotes

    cwd = Path(ctx.obj["cwd"])
    url = _remote_url(ctx, url)
    if directory is None:
        directory = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".mfgit") or "repository"
    with _transfer_bar(quiet or as_json, "clone") as progress:
        repo, report = remotes.clone(url, cwd / directory, s3={"endpoint": endpoint, "region": region, "profile": profile},
                                     progress=progress)
    if as_json:
        _emit_json(report)
    elif not quiet:
        click.echo(f"Cloned into {cwd / directory}")
        click.echo(_transfer_summary("Received", report))


@cli.command()
@click.argument("workdir", default="mfgit-demo", required=False)
@click.option("--sites", type=click.IntRange(2, 8), default=3, show_default=True, help="Hospitals at the start (one more arrives late).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every split, initialisation and batch order.")
@click.pass_context
def demo(ctx, workdir, sites, seed):
    """Run the MedForge workflow end to end on CPU into WORKDIR (about a minute).

    A tiny transformer pre-trained on part of scikit-learn's breast-cancer data; SITES hospitals
    train LoRA adapters, push to a hub, a coordinator merges them; everything stays on disk.
    """
    from mfgit.demo.workflow import DemoError, run_demo

    try:
        run_demo(Path(ctx.obj["cwd"]) / workdir, sites=sites, seed=seed, progress=click.echo)
    except DemoError as e:
        click.echo(f"mfgit: {e}", err=True)
        ctx.exit(cli_errors.USAGE)


# -- audit: diff, lineage, blame, verify, keygen, export (docs/audit.md) ----------------------------


@cli.command("diff")
@click.argument("rev_a")
@click.argument("rev_b", default="HEAD", required=False)
@click.option("--stat", is_flag=True, help="Only the modules that differ and the relative change of each.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/audit.md).")
@click.pass_context
def diff_cmd(ctx, rev_a, rev_b, stat, as_json):
    """Compare the adapters of REV_A and REV_B (default HEAD) module by module."""
    from mfgit.audit.diff import diff_text

    data = _repo(ctx).diff(rev_a, rev_b, stat=stat)
    if as_json:
        _emit_json(data)
    else:
        click.echo(diff_text(data, stat=stat), nl=False)


@cli.command()
@click.argument("rev", default="HEAD", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/audit.md).")
@click.option("--dot", is_flag=True, help="Print the graph in Graphviz DOT.")
@click.option("--html", "html_out", type=click.Path(), default=None, metavar="FILE",
              help="Write one self-contained HTML page drawing the graph.")
@click.pass_context
def lineage(ctx, rev, as_json, dot, html_out):
    """The merge graph of REV down to its site commits, with effective weights."""
    from mfgit.audit.lineage import lineage_dot, lineage_text

    data = _repo(ctx).lineage(rev)
    if html_out:
        from mfgit.audit.html import lineage_html
        from mfgit.store.fileio import atomic_write

        target = Path(ctx.obj["cwd"]) / html_out
        atomic_write(target, lineage_html(data).encode("utf-8"))
        if not (as_json or dot):
            click.echo(f"Wrote {target}")
    if as_json:
        _emit_json(data)
    elif dot:
        click.echo(lineage_dot(data), nl=False)
    elif not html_out:
        click.echo(lineage_text(data), nl=False)


@cli.command()
@click.argument("rev", default="HEAD", required=False)
@click.option("--all", "all_parents", is_flag=True, help="Follow any parent with the same module, not only the first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/audit.md).")
@click.pass_context
def blame(ctx, rev, all_parents, as_json):
    """For each module of REV, the commit that last changed it."""
    from mfgit.audit.blame import blame_text

    data = _repo(ctx).blame(rev, first_parent=not all_parents)
    if as_json:
        _emit_json(data)
    else:
        click.echo(blame_text(data), nl=False)


@cli.command()
@click.argument("rev", default="HEAD", required=False)
@click.option("--reproduce", is_flag=True, help="Re-run every merge in the history from its recorded recipe.")
@click.option("--signatures", is_flag=True, help="Check signatures against the allowed signers.")
@click.option("--branch", default=None, help="Judge REV's history as branch BRANCH (default: the branch REV names).")
@click.option("--tolerance", type=float, default=None, help="Max |ΔW difference| accepted across device types (default 1e-4).")
@click.option("--device", default=None, help="Device for --reproduce (default: the recorded device type if present, else cpu).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/audit.md).")
@click.pass_context
def verify(ctx, rev, reproduce, signatures, branch, tolerance, device, as_json):
    """Check REV: object integrity, and optionally merge reproducibility and signatures."""
    from mfgit.audit.verify import DEFAULT_TOLERANCE, verify_text

    repo = _repo(ctx)
    report = repo.verify(rev, reproduce=reproduce, signatures=signatures, branch=branch,
                         tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance, device=device)
    if as_json:
        _emit_json(report)
    else:
        click.echo(verify_text(report), nl=False)
    if not report["ok"]:
        checks = {f["check"] for f in report["failures"]}
        ctx.exit(cli_errors.DAMAGED if "integrity" in checks else
                 cli_errors.SIGNATURE if "signature" in checks else cli_errors.MERGE)


@cli.command()
@click.argument("path", required=False)
@click.option("-t", "--type", "key_type", type=click.Choice(["ed25519", "ecdsa-p256"]), default="ed25519",
              show_default=True, help="ecdsa-p256 also signs model-signing manifests (export --manifest).")
@click.option("--comment", default=None, help="Comment of the public key (default: user.email).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing key file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def keygen(ctx, path, key_type, comment, force, as_json):
    """Make a signing key: PATH (mode 0600) and PATH.pub."""
    from mfgit.api.audit import keygen as _keygen
    from mfgit.api.config import Config, global_config_path

    if path is None:
        path = global_config_path().parent / ("signing_key" if key_type == "ed25519" else "signing_key_ecdsa")
    else:
        path = Path(ctx.obj["cwd"]) / Path(path).expanduser()
    if comment is None:
        comment = Config(Path(os.devnull)).get("user.email") or os.environ.get("MFGIT_AUTHOR_EMAIL") or ""
    info = _keygen(path, key_type=key_type, comment=comment, force=force)
    if as_json:
        _emit_json(info)
        return
    click.echo(f"Wrote private key {info['private_key']} (mode 0600) and public key {info['public_key']}")
    if info.get("public_key_pem"):
        click.echo(f"PEM public key (for model_signing verify): {info['public_key_pem']}")
    click.echo(f"key id {info['key_id']}")
    click.echo(f"use it: mfgit config signing.key {info['private_key']}")
    click.echo(f"allowed_signers line (replace * with branch patterns): {info['allowed_signers_line']}")


@cli.command()
@click.argument("rev")
@click.argument("outdir", type=click.Path())
@click.option("--card", is_flag=True, help="Write README.md: a model card with base_model, lineage and recipe.")
@click.option("--manifest", is_flag=True, help="Write model.sig: an OpenSSF model-signing manifest, signed.")
@click.option("--key", type=click.Path(), default=None, help="ECDSA key for --manifest (default: signing.manifestKey, then signing.key).")
@click.option("-f", "--force", is_flag=True, help="Write into a non-empty directory.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def export(ctx, rev, outdir, card, manifest, key, force, as_json):
    """Write REV as a PEFT adapter directory OUTDIR, with a model card and a signed manifest."""
    cwd = Path(ctx.obj["cwd"])
    report = _repo(ctx).export(rev, cwd / outdir, card=card, manifest=manifest, force=force,
                               key=(cwd / Path(key).expanduser()) if key else None)
    if as_json:
        _emit_json(report)
        return
    click.echo(f"Wrote {report['dir']} ({len(report['files'])} files)")
    if report["manifest"]:
        click.echo(f"Signed manifest {report['manifest']}; check it with: model_signing verify key "
                   f"--signature {report['manifest']} --public_key PUBLIC_KEY.pem {report['dir']}")


# -- site evaluations and notes (docs/search-and-eval.md) -------------------------------------------


def _import_path(ctx: click.Context) -> None:
    """Score modules are imported like `python -m` does: from -C PATH, the current directory, then sys.path."""
    for here in (os.getcwd(), str(Path(ctx.obj["cwd"]).absolute())):
        if here not in sys.path:
            sys.path.insert(0, here)


@cli.command("eval")
@click.argument("revs", nargs=-1, required=True)
@click.option("--score", required=True, metavar="MODULE:FUNC", help="Your score function: score(model[, data]) -> number or {'score': ..., ...}.")
@click.option("--name", required=True, help="Name of the data evaluated on (e.g. breakhis-val); --select-by uses it.")
@click.option("--base", "base_spec", default=None, metavar="MODULE:FUNC", help="Base model factory (default: base_model() in the score module).")
@click.option("--data", "data_spec", default=None, metavar="MODULE:FUNC", help="This site's data loader (default: load_data() in the score module, if any).")
@click.option("--code", type=click.Path(), default=None, help="Git work tree of the evaluation code (default: the score module's).")
@click.option("-m", "--message", default=None, help="A remark stored with the note.")
@click.option("--sign/--no-sign", "sign", default=None, help="Sign the notes (default: when config signing.key is set).")
@click.option("--json", "as_json", is_flag=True, help="Print the notes as JSON.")
@click.pass_context
def eval_cmd(ctx, revs, score, name, base_spec, data_spec, code, message, sign, as_json):
    """Score REVS on this site's data and attach the numbers to the commits as notes.

    The data never leaves the site: only the returned values are recorded (signed when
    signing.key is set), and `mfgit push REMOTE --notes` shares them.
    """
    repo = _repo(ctx)
    _import_path(ctx)
    written = repo.evaluate(list(revs), score=score, name=name, base=base_spec, data=data_spec,
                            code=(Path(ctx.obj["cwd"]) / code) if code else None, message=message, sign=sign)
    if as_json:
        _emit_json({"notes": written})
        return
    for n in written:
        click.echo(render.note_line(n, with_commit=True))


@cli.group()
def notes():
    """Metrics attached to commits (refs/notes/metrics): show, list."""


@notes.command("show")
@click.argument("rev", default="HEAD", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def notes_show(ctx, rev, as_json):
    """The notes attached to REV, each with its signature check (exit 9 if one is bad)."""
    data = _repo(ctx).notes_show(rev)
    if as_json:
        _emit_json(data)
    else:
        click.echo(render.notes_text(data), nl=False)
    if not data["ok"]:
        ctx.exit(cli_errors.SIGNATURE)


@notes.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def notes_list(ctx, as_json):
    """Every commit that has notes, and how many."""
    data = _repo(ctx).notes_list()
    if as_json:
        _emit_json(data)
        return
    for c in data["commits"]:
        click.echo(f"{c['commit'][:10]} {len(c['notes'])} note(s)")
    if not data["commits"]:
        click.echo("(no notes)")


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


@cli.command()
@click.option("--prune", default="2w", show_default=True, help="Delete unreachable objects older than this (now, 3600, 2h, 14d, 2w).")
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def gc(ctx, prune, dry_run, as_json):
    """Delete objects that no ref or reflog entry reaches."""
    repo = _repo(ctx)
    report = repo.gc(prune_older_than=_parse_duration(prune), dry_run=dry_run)
    if as_json:
        report = dict(report)
        _emit_json(report)
    else:
        verb = "Would delete" if dry_run else "Deleted"
        click.echo(f"{verb} {report['deleted']} unreachable object(s), {render.human_bytes(report['bytes_freed'])}; "
                   f"kept {report['kept_unreachable_young']} younger than the grace period.")


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="mfgit")


if __name__ == "__main__":  # pragma: no cover
    main()
