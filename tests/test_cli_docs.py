"""docs/cli.md is generated from the click definitions and must stay in step."""

from pathlib import Path

from mfgit.cli.docgen import generate

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def test_cli_reference_matches_the_command_definitions():
    assert DOC.read_text(encoding="utf-8") == generate(), (
        "docs/cli.md is out of date: regenerate it with `python -m mfgit.cli.docgen > docs/cli.md`"
    )


def test_every_command_is_documented_with_its_help():
    text = generate()
    from mfgit.cli.main import cli

    for name, cmd in cli.commands.items():
        assert f"### `mfgit {name}`" in text
        assert (cmd.help or "").strip(), f"command {name} has no help text"
