"""eval and notes: site evaluations attached to commits (docs/search-and-eval.md)."""

from __future__ import annotations

from pathlib import Path

import click

from mfgit.cli import errors as cli_errors
from mfgit.cli.common import emit_json, import_path, open_repo
from mfgit.render import text as render


@click.command("eval")
@click.argument("revs", nargs=-1, required=True)
@click.option("--score", required=True, metavar="MODULE:FUNC", help="Your score function: score(model[, data]) -> number or {'score': ..., ...} (a mixture commit's model is its mixture module), or 'prompts': the built-in prompt classifier.")
@click.option("--name", required=True, help="Name of the data evaluated on (e.g. breakhis-val); --select-by uses it.")
@click.option("--base", "base_spec", default=None, metavar="MODULE:FUNC", help="Base model factory (default: base_model() in the score module).")
@click.option("--data", "data_spec", default=None, metavar="MODULE:FUNC", help="This site's data loader, or attachments:NAME: attachment NAME of each revision's leaves (default: load_data() in the score module, if any).")
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
    repo = open_repo(ctx)
    import_path(ctx)
    written = repo.evaluate(list(revs), score=score, name=name, base=base_spec, data=data_spec,
                            code=(Path(ctx.obj["cwd"]) / code) if code else None, message=message, sign=sign)
    if as_json:
        emit_json({"notes": written})
        return
    for n in written:
        click.echo(render.note_line(n, with_commit=True))


@click.group()
def notes():
    """Metrics attached to commits (refs/notes/metrics): show, list."""


@notes.command("show")
@click.argument("rev", default="HEAD", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def notes_show(ctx, rev, as_json):
    """The notes attached to REV, each with its signature check (exit 9 if one is bad)."""
    data = open_repo(ctx).notes_show(rev)
    if as_json:
        emit_json(data)
    else:
        click.echo(render.notes_text(data), nl=False)
    if not data["ok"]:
        ctx.exit(cli_errors.SIGNATURE)


@notes.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def notes_list(ctx, as_json):
    """Every commit that has notes, and how many."""
    data = open_repo(ctx).notes_list()
    if as_json:
        emit_json(data)
        return
    for c in data["commits"]:
        click.echo(f"{c['commit'][:10]} {len(c['notes'])} note(s)")
    if not data["commits"]:
        click.echo("(no notes)")


COMMANDS = [eval_cmd, notes]
