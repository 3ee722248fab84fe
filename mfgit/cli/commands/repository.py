"""init, config, commit, log, show, branch, switch, checkout, tag, status, attachments."""

from __future__ import annotations

from pathlib import Path

import click

from mfgit.cli.common import emit_json, open_repo, quiet_blas
from mfgit.cli.progress import byte_progress
from mfgit.errors import BadLoraConfig
from mfgit.formats.rawlora import lora_options, parse_lora_option
from mfgit.render import text as render
from mfgit.render.escape import terminal


@click.command()
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
    click.echo(f"Initialized empty {'bare ' if bare else ''}mfgit repository in {terminal(repo.gitdir)}")


@click.command()
@click.argument("key", required=False)
@click.argument("value", required=False)
@click.option("--global", "global_", is_flag=True, help="Use the user's file instead of the repository's.")
@click.option("--unset", is_flag=True, help="Remove KEY.")
@click.option("-l", "--list", "list_", is_flag=True, help="List all settings.")
@click.pass_context
def config(ctx, key, value, global_, unset, list_):
    """Get or set options: user.name, user.email, site, remote.NAME.url, ..."""
    from mfgit.api.config import user_config

    from mfgit.api.remotes import check_remote_setting

    if global_:
        cfg = user_config()
    else:
        cfg = open_repo(ctx).config
    scope = "global" if global_ else "repo"
    if list_ or key is None:
        items = cfg.global_file.items() if global_ else cfg.items()
        for k, v in sorted(items.items()):
            click.echo(f"{terminal(k)}={terminal(v)}")
        return
    if unset:
        cfg.set(key, None, scope=scope)
        return
    if value is None:
        v = cfg.global_file.get(key) if global_ else cfg.get(key)
        if v is None:
            ctx.exit(1)
        click.echo(terminal(v))
        return
    check_remote_setting(key, value)  # a URL or endpoint with credentials is never stored
    cfg.set(key, value, scope=scope)


@click.command()
@click.argument("adapter", type=click.Path())
@click.option("-m", "--message", required=True, help="Commit message.")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Record metadata (repeatable), e.g. samples=1200.")
@click.option("--code", type=click.Path(), default=None, help="Git work tree of the training code (default: the one holding ADAPTER).")
@click.option("--allow-pickle", is_flag=True,
              help="Accept a pickle (adapter_model.bin, a raw .pt), loaded with torch weights_only=True.")
@click.option("--lora", "lora", metavar="r=R,alpha=A[,dropout=D,rslora=B]", default=None,
              help="ADAPTER is a raw LoRA state dict (.pt/.safetensors, no adapter_config.json) with this config.")
@click.option("--lora-config", type=click.Path(), default=None,
              help="The same from a JSON/YAML file (keys r, alpha, dropout, rslora, targets, base_model).")
@click.option("--base", "base_model", metavar="NAME", default=None,
              help="The base model of a raw LoRA state dict (its name or path, as PEFT records it).")
@click.option("--allow-empty", is_flag=True, help="Commit even if the adapter equals HEAD's.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print the new commit as JSON.")
@click.option("-S", "--sign", is_flag=True, help="Sign the commit with the key in config signing.key (docs/audit.md).")
@click.option("--attach", multiple=True, metavar="NAME=PATH",
              help="Commit a file (or each file of a folder, as NAME/relpath) with the adapter; pushed with it (repeatable).")
@click.option("--attach-private", multiple=True, metavar="NAME=PATH",
              help="As --attach, but only its size and digest are shared: the bytes stay in this repository (repeatable).")
@click.pass_context
def commit(ctx, adapter, message, meta, code, allow_pickle, lora, lora_config, base_model, allow_empty, quiet,
           as_json, sign, attach, attach_private):
    """Record the PEFT adapter directory ADAPTER (or a raw LoRA state dict, with --lora) as a new commit."""
    quiet_blas()
    repo = open_repo(ctx)
    cwd = Path(ctx.obj["cwd"])  # relative paths are relative to -C PATH, as for every command
    if lora is not None and lora_config is not None:
        raise BadLoraConfig("--lora-config", "give --lora or --lora-config, not both")
    if lora is not None:
        options = lora_options(parse_lora_option(lora), "--lora")
    else:
        options = cwd / lora_config if lora_config else None
    attachments, private = _attachment_args(attach, cwd), _attachment_args(attach_private, cwd)
    with byte_progress("commit", quiet=quiet or as_json) as progress:
        info = repo.commit(cwd / adapter, message, meta=list(meta), code=(cwd / code) if code else None,
                           allow_pickle=allow_pickle, allow_empty=allow_empty, sign=repo.signer() if sign else None,
                           progress=progress, lora=options, base_model=base_model,
                           attachments=attachments, private_attachments=private)
    if as_json:
        emit_json(info.to_dict())
    else:
        branch = repo.head_branch() or "detached HEAD"
        root = " (root-commit)" if not info.commit.parents else ""
        click.echo(f"[{terminal(branch)}{root} {info.id[:10]}] {terminal(message.splitlines()[0] if message else '')}")


def _attachment_args(values: tuple[str, ...], cwd: Path) -> dict[str, Path]:
    """NAME=PATH options as {NAME: PATH}; a name given twice is refused, not overwritten."""
    from mfgit.errors import InvalidAttachment

    out: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not path:
            raise InvalidAttachment(value, "give it as NAME=PATH")
        if name in out:
            raise InvalidAttachment(name, "is given twice")
        out[name] = cwd / path
    return out


@click.command()
@click.argument("rev", default="HEAD", required=False)
@click.option("-n", "--max-count", type=int, default=None, help="Show at most N commits.")
@click.option("--graph", is_flag=True, help="Draw the commit graph.")
@click.option("--oneline", is_flag=True, help="One line per commit.")
@click.option("--first-parent", is_flag=True, help="Follow only the first parent of merges.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/json.md).")
@click.pass_context
def log(ctx, rev, max_count, graph, oneline, first_parent, as_json):
    """Show the history of REV (or A..B: in B but not in A)."""
    repo = open_repo(ctx)
    commits = repo.log(rev, n=max_count, first_parent=first_parent)
    decorations = repo.decorations()
    notes = repo.notes_by_commit([c.id for c in commits])
    docs = [c.to_dict() for c in commits]
    if as_json:
        emit_json({"commits": [render.commit_json(c, decorations, notes) for c in docs]})
        return
    click.echo(render.log_text(docs, decorations, graph=graph, oneline=oneline, notes=notes), nl=False)


@click.command()
@click.argument("rev", default="HEAD", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/json.md).")
@click.pass_context
def show(ctx, rev, as_json):
    """Show a commit: message, provenance and adapter summary."""
    repo = open_repo(ctx)
    data = repo.show(rev)
    notes = repo.notes_by_commit([data["id"]]).get(data["id"])
    if notes:
        data["notes"] = notes
    if as_json:
        emit_json(data)
    else:
        click.echo(render.show_text(data, repo.decorations()), nl=False)


@click.command()
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
    repo = open_repo(ctx)
    if delete or force_delete:
        if not name:
            raise click.UsageError("branch -d needs a NAME")
        oid = repo.delete_branch(name, force=force_delete)
        click.echo(f"Deleted branch {terminal(name)} (was {oid[:10]}).")
        return
    if name:
        oid = repo.create_branch(name, start, force=force)
        click.echo(f"Branch {terminal(name)} at {oid[:10]}")
        return
    local = [] if remotes else repo.branches()
    remote = repo.branches(remote=True) if (remotes or all_) else []
    if as_json:
        emit_json({"current": repo.head_branch(), "branches": local, "remotes": remote})
        return
    for b in local:
        mark = "*" if b["current"] else " "
        click.echo(f"{mark} {terminal(b['name']):<24} {b['commit'][:10]} {terminal(b['subject'])}")
    for b in remote:
        click.echo(f"  remotes/{terminal(b['name']):<16} {b['commit'][:10]} {terminal(b['subject'])}")
    if not local and not remote and repo.head_branch():
        click.echo(f"(no commits yet on {terminal(repo.head_branch())})")


@click.command()
@click.argument("name")
@click.argument("start", required=False)
@click.option("-c", "--create", is_flag=True, help="Create NAME (from START or HEAD) and switch to it.")
@click.option("--orphan", is_flag=True, help="Switch to a new branch with no history yet.")
@click.pass_context
def switch(ctx, name, start, create, orphan):
    """Make NAME the current branch (new commits go there)."""
    repo = open_repo(ctx)
    repo.switch(name, create=create, orphan=orphan, start=start)
    click.echo(f"Switched to {'a new ' if create or orphan else ''}branch '{terminal(name)}'")


@click.command()
@click.argument("rev")
@click.option("--to", "to", required=True, type=click.Path(), help="Output directory (must be empty unless --force).")
@click.option("-f", "--force", is_flag=True, help="Write into a non-empty directory, replacing adapter files.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--with-attachments", is_flag=True, help="Also write the commit's attachments under TO/attachments/NAME.")
@click.pass_context
def checkout(ctx, rev, to, force, quiet, with_attachments):
    """Write the adapter of REV as a PEFT adapter directory (a mixture: members/<n>-<id>/ and mixture.json)."""
    quiet_blas()
    repo = open_repo(ctx)
    with byte_progress("checkout", quiet=quiet) as progress:
        out = repo.checkout(rev, Path(ctx.obj["cwd"]) / to, force=force, progress=progress,
                            with_attachments=with_attachments)
    click.echo(f"Wrote {terminal(out)}")
    if with_attachments:
        for a in repo.attachments(rev):
            if not a["present"]:
                click.echo(f"not written: {terminal(a['name'])} (private to the site that committed it)", err=True)


@click.command()
@click.argument("rev", default="HEAD", required=False)
@click.argument("name", required=False)
@click.option("-o", "--output", "output", type=click.Path(), default=None,
              help="Write attachment NAME to this file (default: standard output).")
@click.option("--json", "as_json", is_flag=True, help="List as JSON (see docs/json.md).")
@click.pass_context
def attachments(ctx, rev, name, output, as_json):
    """List the attachments of REV, or write attachment NAME."""
    repo = open_repo(ctx)
    if name is None:
        items = repo.attachments(rev)
        if as_json:
            emit_json({"commit": repo.resolve(rev), "attachments": items})
        else:
            click.echo(render.attachments_text(items), nl=False)
        return
    data = repo.read_attachment(rev, name)
    if output is None:
        click.get_binary_stream("stdout").write(data)
        return
    from mfgit.store.fileio import atomic_write

    atomic_write(Path(ctx.obj["cwd"]) / output, data)


@click.command()
@click.argument("name", required=False)
@click.argument("rev", required=False, default="HEAD")
@click.option("-m", "--message", default=None, help="Make an annotated tag with this message.")
@click.option("-f", "--force", is_flag=True, help="Replace an existing tag.")
@click.option("--json", "as_json", is_flag=True, help="List tags as JSON.")
@click.option("-s", "--sign", is_flag=True, help="Make a signed annotated tag with the key in config signing.key.")
@click.pass_context
def tag(ctx, name, rev, message, force, as_json, sign):
    """Name a commit (list tags without NAME)."""
    repo = open_repo(ctx)
    if not name:
        tags = repo.tags()
        if as_json:
            emit_json({"tags": tags})
        else:
            for t in tags:
                click.echo(terminal(t["name"]))
        return
    repo.tag(name, rev, message=message, force=force, sign=repo.signer() if sign else None)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/json.md).")
@click.pass_context
def status(ctx, as_json):
    """Show the current branch, HEAD's adapter and the adapter directories committed from here."""
    repo = open_repo(ctx)
    data = repo.status()
    if as_json:
        emit_json(data)
    else:
        click.echo(render.status_text(data), nl=False)


COMMANDS = [init, config, commit, log, show, branch, switch, checkout, tag, status, attachments]
