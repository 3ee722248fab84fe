"""Generate docs/cli.md from the click definitions.

``python -m mfgit.cli.docgen > docs/cli.md``; a test keeps the file in step.
"""

from __future__ import annotations

import click

from mfgit.cli import errors as cli_errors
from mfgit.cli.main import cli

HEADER = """# mfgit command reference

Generated from the command definitions by `python -m mfgit.cli.docgen > docs/cli.md`;
`tests/test_cli_docs.py` fails when this file falls out of step. Every read
command takes `--json`; its documents are described in [json.md](json.md).
Global option: `-C PATH` runs as if mfgit was started in PATH.
"""

EXIT_CODES = [
    (cli_errors.OK, "success"),
    (cli_errors.REJECTED, "refused as a normal outcome: nothing to commit, non-fast-forward push, unmerged branch"),
    (cli_errors.USAGE, "bad command line"),
    (cli_errors.NOT_A_REPO, "not a repository, or a repository format this mfgit does not know"),
    (cli_errors.BAD_INPUT, "bad input: adapter, safetensors file, pickle, name, revision, output directory"),
    (cli_errors.DAMAGED, "the repository is damaged: corrupt or missing object (fsck found damage)"),
    (cli_errors.REMOTE, "remote unreachable, missing bucket, wrong credentials"),
    (cli_errors.CONFLICT, "a ref moved under us or is locked by another process"),
    (cli_errors.MERGE, "the adapters cannot be merged as asked"),
    (cli_errors.SIGNATURE, "signature verification failed"),
    (cli_errors.INTERNAL, "internal error (a bug; rerun with MFGIT_DEBUG=1)"),
    (cli_errors.OS_ERROR, "operating-system error: permissions, disk full"),
]


def _usage(cmd: click.Command, path: str) -> str:
    ctx = click.Context(cmd, info_name=path)
    pieces = cmd.collect_usage_pieces(ctx)
    return f"{path} {' '.join(pieces)}".strip()


def _options(cmd: click.Command) -> list[str]:
    rows = []
    ctx = click.Context(cmd)
    for p in cmd.get_params(ctx):
        if isinstance(p, click.Option):
            rec = p.get_help_record(ctx)
            if rec:
                opt, help_text = rec
                rows.append(f"| `{opt}` | {help_text.replace('|', '/')} |")
    return rows


def _walk(group: click.Group, prefix: str):
    for name in sorted(group.commands):
        cmd = group.commands[name]
        path = f"{prefix} {name}"
        yield path, cmd
        if isinstance(cmd, click.Group):
            yield from _walk(cmd, path)


def generate() -> str:
    out = [HEADER]
    out.append("## Commands\n")
    for path, cmd in _walk(cli, "mfgit"):
        out.append(f"### `{path}`\n")
        help_text = (cmd.help or "").strip()
        if help_text:
            out.append(help_text + "\n")
        out.append(f"```\n{_usage(cmd, path)}\n```\n")
        rows = _options(cmd)
        if rows:
            out.append("| option | meaning |\n| --- | --- |")
            out.extend(rows)
            out.append("")
    out.append("## Exit codes\n")
    out.append("| code | meaning |\n| --- | --- |")
    out.extend(f"| {code} | {meaning} |" for code, meaning in EXIT_CODES)
    out.append("")
    out.append("Every error prints one line on stderr: `mfgit: <what is wrong> (<what to do>)`.\n")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(generate(), end="")
