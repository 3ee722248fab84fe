"""diff, lineage, pages, blame, verify, keygen, export (docs/audit.md, docs/pages.md)."""

from __future__ import annotations

from pathlib import Path

import click

from mfgit.cli import errors as cli_errors
from mfgit.cli.common import emit_json, open_repo, quiet_blas
from mfgit.cli.progress import progress_bar
from mfgit.render.audit import blame_text, diff_text, lineage_dot, lineage_text, verify_text
from mfgit.render.escape import terminal, terminal_doc


@click.command("diff")
@click.argument("rev_a")
@click.argument("rev_b", default="HEAD", required=False)
@click.option("--stat", is_flag=True, help="Only the modules that differ and the relative change of each.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/audit.md).")
@click.pass_context
def diff_cmd(ctx, rev_a, rev_b, stat, as_json):
    """Compare the adapters of REV_A and REV_B (default HEAD) module by module."""
    data = open_repo(ctx).diff(rev_a, rev_b, stat=stat)
    if as_json:
        emit_json(data)
    else:
        click.echo(diff_text(data, stat=stat), nl=False)


@click.command()
@click.argument("rev", default="HEAD", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/audit.md).")
@click.option("--dot", is_flag=True, help="Print the graph in Graphviz DOT.")
@click.option("--html", "html_out", type=click.Path(), default=None, metavar="FILE",
              help="Write one self-contained HTML page drawing the graph.")
@click.pass_context
def lineage(ctx, rev, as_json, dot, html_out):
    """The merge graph of REV down to its site commits, with effective weights."""
    repo = open_repo(ctx)
    data = repo.lineage(rev)
    if html_out:
        target = repo.write_lineage_page(data, Path(ctx.obj["cwd"]) / html_out)
        if not (as_json or dot):
            click.echo(f"Wrote {terminal(target)}")
    if as_json:
        emit_json(data)
    elif dot:
        click.echo(lineage_dot(data), nl=False)
    elif not html_out:
        click.echo(lineage_text(data), nl=False)



@click.command()
@click.argument("out", type=click.Path())
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@click.pass_context
def pages(ctx, out, quiet, as_json):
    """Write static HTML pages of the repository to directory OUT: sites, commits, merges, notes (docs/pages.md)."""
    quiet_blas()
    repo = open_repo(ctx)
    with progress_bar("writing pages", quiet=quiet or as_json) as progress:
        report = repo.pages(Path(ctx.obj["cwd"]) / out, progress=progress)
    if as_json:
        emit_json(report)
    else:
        click.echo(f"Wrote {report['commits']} commit pages and the index to {terminal(report['out'])} "
                   f"(open {terminal(report['index'])})")

@click.command()
@click.argument("rev", default="HEAD", required=False)
@click.option("--all", "all_parents", is_flag=True, help="Follow any parent with the same module, not only the first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/audit.md).")
@click.pass_context
def blame(ctx, rev, all_parents, as_json):
    """For each module of REV, the commit that last changed it."""
    data = open_repo(ctx).blame(rev, first_parent=not all_parents)
    if as_json:
        emit_json(data)
    else:
        click.echo(blame_text(data), nl=False)


@click.command()
@click.argument("rev", default="HEAD", required=False)
@click.option("--reproduce", is_flag=True, help="Re-run every merge in the history from its recorded recipe.")
@click.option("--signatures", is_flag=True, help="Check signatures against the allowed signers.")
@click.option("--branch", default=None, help="Also judge REV's history as branch BRANCH (besides the branches REV is on).")
@click.option("--tolerance", type=float, default=None, help="Max |ΔW difference| accepted across device types (default 1e-4).")
@click.option("--device", default=None, help="Device for --reproduce (default: the recorded device type if present, else cpu).")
@click.option("--base-weights", type=click.Path(), default=None, metavar="PATH",
              help="For --reproduce of DoRA merges: the base model's weights they recorded (by SHA-256).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/audit.md).")
@click.pass_context
def verify(ctx, rev, reproduce, signatures, branch, tolerance, device, base_weights, quiet, as_json):
    """Check REV: object integrity, and optionally merge reproducibility and signatures."""
    repo = open_repo(ctx)
    extra: dict = {"tolerance": tolerance} if tolerance is not None else {}
    if base_weights is not None:
        extra["base_weights"] = Path(ctx.obj["cwd"]) / base_weights
    with progress_bar("re-running merges", quiet=quiet or as_json or not reproduce) as progress:
        report = repo.verify(rev, reproduce=reproduce, signatures=signatures, branch=branch, device=device,
                             progress=progress, **extra)
    if as_json:
        emit_json(report)
    else:
        click.echo(verify_text(report), nl=False)
    if not report["ok"]:
        checks = {f["check"] for f in report["failures"]}
        ctx.exit(cli_errors.DAMAGED if "integrity" in checks else
                 cli_errors.SIGNATURE if "signature" in checks else cli_errors.MERGE)


@click.command()
@click.argument("path", required=False)
@click.option("-t", "--type", "key_type", type=click.Choice(["ed25519", "ecdsa-p256"]), default="ed25519",
              show_default=True, help="ecdsa-p256 also signs model-signing manifests (export --manifest).")
@click.option("--comment", default=None, help="Comment of the public key (default: user.email).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing key file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def keygen(ctx, path, key_type, comment, force, as_json):
    """Make a signing key: PATH (mode 0600) and PATH.pub."""
    from mfgit.api.keys import keygen as make_key

    if path is not None:
        path = Path(ctx.obj["cwd"]) / Path(path).expanduser()
    info = make_key(path, key_type=key_type, comment=comment, force=force)
    if as_json:
        emit_json(info)
        return
    info = terminal_doc(info)
    click.echo(f"Wrote private key {info['private_key']} (mode 0600) and public key {info['public_key']}")
    if info.get("public_key_pem"):
        click.echo(f"PEM public key (for model_signing verify): {info['public_key_pem']}")
    click.echo(f"key id {info['key_id']}")
    click.echo(f"use it: mfgit config signing.key {info['private_key']}")
    click.echo(f"allowed_signers line (replace * with branch patterns): {info['allowed_signers_line']}")


@click.command()
@click.argument("rev")
@click.argument("outdir", type=click.Path())
@click.option("--card", is_flag=True, help="Write README.md: the committed card's metadata and text, "
              "with base_model, lineage and recipe.")
@click.option("--manifest", is_flag=True, help="Write model.sig: an OpenSSF model-signing manifest, signed.")
@click.option("--key", type=click.Path(), default=None, help="ECDSA key for --manifest (default: signing.manifestKey, then signing.key).")
@click.option("--base-model-id", default=None, metavar="ID",
              help="The Hub id the card and adapter_config.json name as the base model "
                   "(default: the recorded base model, if it is a Hub id).")
@click.option("-f", "--force", is_flag=True, help="Write into a non-empty directory (refused, nothing written, "
              "if it holds a private attachment's bytes).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def export(ctx, rev, outdir, card, manifest, key, base_model_id, force, as_json):
    """Write REV as a PEFT adapter directory OUTDIR, with a model card and a signed manifest."""
    cwd = Path(ctx.obj["cwd"])
    report = open_repo(ctx).export(rev, cwd / outdir, card=card, manifest=manifest, force=force,
                               key=(cwd / Path(key).expanduser()) if key else None, base_model_id=base_model_id)
    for warning in report["warnings"]:
        click.echo(f"mfgit: warning: {terminal(warning)}", err=True)
    if as_json:
        emit_json(report)
        return
    where, manifest = terminal(report["dir"]), report["manifest"] and terminal(report["manifest"])
    click.echo(f"Wrote {where} ({len(report['files'])} files)")
    if manifest:
        click.echo(f"Signed manifest {manifest}; check it with: model_signing verify key "
                   f"--signature {manifest} --public_key PUBLIC_KEY.pem {where}")


COMMANDS = [diff_cmd, lineage, pages, blame, verify, keygen, export]
