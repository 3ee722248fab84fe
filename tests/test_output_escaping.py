"""What a participant wrote never reaches the terminal or the lineage page raw (docs/design.md, invariant 13).

A hostile participant controls every string of the commits it makes and
pushes: author name and email, site, message, metadata, branch and tag
names. Here they hold CSI colour and cursor sequences, OSC 0 (window title)
and OSC 8 (hyperlink) sequences, a C1 CSI, bidi overrides and isolates,
zero-width and other invisible characters, carriage returns and newlines
that try to forge extra lines. Every text command shows them as visible
escapes (``\\x1b``, ``\\u202e``, ``\\n``), keeps its line count, and ``--json``
still gives the exact data; the lineage page, opened in headless Chromium,
shows them as text and makes no element of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mfgit.api.repository import Repository
from tests.browser import headless_chromium, severe_errors
from tests.conftest import Cli, build_adapter, isolated_env, one_line_error
from tests.test_remote_sync import derive_adapter, in_process_env

CSI = "\x1b[31;1mRED\x1b[2J\x1b[H"
OSC0 = "\x1b]0;window title pwned\x07"
OSC8 = "\x1b]8;;http://evil.example/\x1b\\click me\x1b]8;;\x1b\\"
C1 = "\x9b31m\x9d0;c1 title\x9c"
BIDI = "\u202egnp.exe\u202c \u2066iso\u2069 \u200b\ufeff\u00ad\u3164"
CR = "ok\rFORGED"
HTML = "<img src=x onerror=alert(1)></script><script>alert(2)</script><b>bold</b>"

# One-line fields (author, email, site) cannot hold control characters at all: the object
# schema refuses them on write and on read (test_control_characters_in_names_are_refused).
# What they can hold is every invisible and bidi-reordering format character.
AUTHOR = "Mallory \u202eecilA\u202c \u2066x\u2069\u200b"
EMAIL = "m\u200b\u202e@evil.example"
SITE = f"hospital-{BIDI}"
SITE_B = f"clinic-{BIDI}"  # the second site, also hostile
META = f"{OSC0}{CSI}\x7f{CR}"
BRANCH = "sites/evil\u202ecod\u2066x\u2069"
TAG = "v1\u202e2"
MESSAGE = f"round 1 {CSI}{OSC8}{HTML}\n\n{BIDI}\n{CR}\n    indented {C1}"
MERGE_MESSAGE = f"merge {OSC0}{HTML}{BIDI}"

# What must never appear raw in terminal output: C0 but tab and newline, DEL,
# C1, bidi controls, zero-width and other invisible or format characters.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u061c\u115f\u1160\u180e\u200b-\u200f"
                 "\u2028-\u202e\u2060-\u2069\u3164\ufeff\uffa0]")


def assert_clean(text: str, what: str) -> None:
    m = RAW.search(text)
    assert m is None, f"{what}: raw {m.group(0)!r} at {m.start()}: {text[max(0, m.start() - 60):m.start() + 60]!r}"


def repo_as(root: Path, author: str, email: str) -> tuple[Cli, Path, dict[str, str]]:
    """A new repository at root/repo and the `mfgit` command run in it as `author` <`email`>."""
    env = isolated_env(root / "home", MFGIT_AUTHOR_NAME=author, MFGIT_AUTHOR_EMAIL=email)
    repo_dir = root / "repo"
    Cli(root / "home", root, env).ok("init", repo_dir)
    return Cli(root / "home", repo_dir, env), repo_dir, env


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, adapter_store):
    """A repository with commits, a merge, a branch and a tag whose every participant field is hostile."""
    root = tmp_path_factory.mktemp("hostile-output")
    cli, repo_dir, env = repo_as(root, AUTHOR, EMAIL)
    one = build_adapter(adapter_store, seed=1)
    two = derive_adapter(one, root / "adapter-two")
    cli.ok("config", "site", SITE.replace("\n", " "))  # config refuses line breaks; the commit below has one
    cli.ok("switch", "--orphan", BRANCH)
    cli.ok("commit", one, "-m", MESSAGE, "--meta", "samples=100", "--meta", f"note{CSI}={META}")
    with in_process_env(env):
        repo = Repository.open(repo_dir)
        first = repo.head()
        # The second site's commit is written by its own tooling.
        cli.ok("switch", "--orphan", "sites/b")
        cli.ok("commit", two, "-m", "b", "--meta", "samples=200")
        made = repo.read_commit(repo.head())
        crafted = type(made)(adapter=made.adapter, parents=(), author={"name": AUTHOR, "email": EMAIL}, site=SITE_B,
                             timestamp=made.timestamp, message=MESSAGE,
                             provenance={**made.provenance, "meta": {f"k{OSC8}": META, "samples": 200}})
        cid = repo.put_commit(crafted)
        repo.refs.update("refs/heads/sites/b", cid, made.id, who="test", message="crafted")
        cli.ok("switch", "--orphan", "main")
        repo.merge([first, "sites/b"], weights=[0.5, 0.5], rank="sum", message=MERGE_MESSAGE)
    cli.ok("tag", TAG, "main")
    return {"cli": cli, "repo": repo_dir, "first": first, "crafted": cid}


def run(cli: Cli, *args) -> str:
    res = cli.ok(*args)
    assert_clean(res.stdout, " ".join(map(str, args)))
    assert_clean(res.stderr, " ".join(map(str, args)) + " (stderr)")
    return res.stdout


def test_log_escapes_control_sequences_and_newlines_do_not_forge_lines(hostile):
    cli = hostile["cli"]
    n = len(cli.json("log", "--json")["commits"])
    assert n == 3
    out = run(cli, "log")
    lines = out.splitlines()
    assert sum(ln.startswith("commit ") for ln in lines) == n
    assert sum(ln.startswith("Author: ") for ln in lines) == n
    assert sum(ln.startswith("Site:   ") for ln in lines) == n
    assert sum(ln.startswith("Date:   ") for ln in lines) == n
    assert "Mallory \\u202eecilA\\u202c" in out and "\\x1b]0;window title pwned\\x07" in out
    assert "\\x1b[31;1mRED" in out and "\\u202egnp.exe\\u202c" in out and "\\x9b31m" in out
    assert "\\u200b\\ufeff\\xad\\u3164" in out
    assert "ok\\rFORGED" in out
    # The message keeps its lines, each indented and escaped.
    assert "    \\u202egnp.exe\\u202c \\u2066iso\\u2069 \\u200b\\ufeff\\xad\\u3164" in lines
    assert "        indented \\x9b31m\\x9d0;c1 title\\x9c" in lines
    assert len(run(cli, "log", "--oneline").splitlines()) == n
    graph = run(cli, "log", "--graph")
    assert sum("  [" in ln for ln in graph.splitlines()) == n


def test_json_output_keeps_the_exact_data(hostile):
    cli = hostile["cli"]
    commits = {c["id"]: c for c in cli.json("log", "--json")["commits"]}
    crafted = commits[hostile["crafted"]]
    assert crafted["author"] == {"name": AUTHOR, "email": EMAIL} and crafted["site"] == SITE_B
    assert crafted["message"] == MESSAGE and crafted["provenance"]["meta"][f"k{OSC8}"] == META
    assert BRANCH in [b["name"] for b in cli.json("branch", "--json")["branches"]]


def test_show_status_branch_tag_config_escape_participant_fields(hostile):
    cli = hostile["cli"]
    for rev in (hostile["first"], hostile["crafted"], "main"):
        out = run(cli, "show", rev)
        assert sum(ln.startswith("Author: ") for ln in out.splitlines()) == 1
    out = run(cli, "show", hostile["crafted"])
    assert '"k\\u001b]8;;http://evil.example/' in out  # the provenance JSON of the exact data, escaped by JSON
    out = run(cli, "show", hostile["first"])
    assert "note\\u001b[31;1mRED" in out
    run(cli, "status")
    out = run(cli, "branch")
    assert "sites/evil\\u202ecod\\u2066x\\u2069" in out and len(out.splitlines()) == 3
    assert run(cli, "tag").splitlines() == ["v1\\u202e2"]
    out = run(cli, "config", "--list")
    assert "user.site=hospital-\\u202egnp.exe" in out
    assert run(cli, "config", "user.site").startswith("hospital-\\u202e")
    run(cli, "switch", BRANCH)
    assert "sites/evil\\u202ecod" in run(cli, "status")
    run(cli, "switch", "main")


def test_audit_commands_escape_participant_fields(hostile):
    cli = hostile["cli"]
    out = run(cli, "lineage", "main")
    assert "\\x1b]0;window title pwned\\x07" in out and "hospital-\\u202egnp.exe" in out
    dot = run(cli, "lineage", "main", "--dot")
    assert "\\\\x1b" in dot  # DOT's own escaping on top: the label reads \x1b
    out = run(cli, "blame", "main")
    out = run(cli, "blame", BRANCH)
    assert "hospital-\\u202egnp.exe" in out and len(out.splitlines()) == len(cli.json("blame", BRANCH, "--json")["modules"])
    run(cli, "verify", "main")
    run(cli, "diff", hostile["first"], hostile["crafted"])


def test_error_lines_escape_participant_names(hostile):
    cli = hostile["cli"]
    res = cli("branch", BRANCH, "main")  # it exists: the error names it
    assert res.returncode == 4
    line = one_line_error(res.stderr)
    assert_clean(res.stderr, "branch (stderr)")
    assert "sites/evil\\u202ecod\\u2066x\\u2069" in line


def test_lineage_page_shows_hostile_text_as_text(hostile, tmp_path):
    cli = hostile["cli"]
    page = tmp_path / "lineage.html"
    run(cli, "lineage", "main", "--html", page)
    html = page.read_text(encoding="utf-8")
    assert_clean(html, "the lineage page")
    assert html.count("<script") == 2 and "<img" not in html and "<b>" not in html

    with headless_chromium(tmp_path) as browser:
        from selenium.webdriver.common.by import By

        browser.get(page.as_uri())
        assert browser.title == f"Lineage of {cli.json('show', 'main', '--json')['id'][:10]}"
        for node in (hostile["crafted"], hostile["first"], cli.json("show", "main", "--json")["id"]):
            browser.find_element(By.CSS_SELECTOR, f'g.node[data-id="{node}"]').click()
            panel = browser.find_element(By.ID, "panel")
            assert panel.get_attribute("data-commit") == node
            assert_clean(panel.text, "the panel")
            assert "<img src=x onerror=alert(1)>" in panel.text or node != hostile["first"]
        text = browser.find_element(By.TAG_NAME, "body").text
        assert_clean(text, "the page as drawn")
        assert "\\u202egnp.exe" in text and "\\x1b]0;window title pwned\\x07" in text
        # Nothing a participant wrote became an element, a script or a link.
        counts = browser.execute_script(
            "return [document.querySelectorAll('img').length, document.querySelectorAll('script').length,"
            " document.querySelectorAll('b').length, document.querySelectorAll('a[href^=\"http\"]').length]")
        assert counts == [0, 2, 0, 0]
        assert not severe_errors(browser)


def test_escape_rules():
    from mfgit.render.escape import terminal, terminal_doc, terminal_text

    assert terminal("a\x1b[31mb\nc\td") == "a\\x1b[31mb\\nc\\td"
    assert terminal_text("a\x1b\n\tb\r") == "a\\x1b\n\tb\\r"
    assert terminal("\u202e\u2066\U000e0041\x9b\x7f") == "\\u202e\\u2066\\U000e0041\\x9b\\x7f"
    assert terminal("Zürich 東京 🙂 café") == "Zürich 東京 🙂 café"  # printable text is left alone
    doc = terminal_doc({"message": "a\nb\x1b", "author": {"name\n": "x\ny"}, "n": [1, "\x07"]})
    assert doc == {"message": "a\nb\\x1b", "author": {"name\\n": "x\\ny"}, "n": [1, "\\x07"]}
    assert json.loads(json.dumps(doc)) == doc


def test_notes_renderers_escape_note_fields():
    """`notes list` / `notes show` render notes whose name, values, site and code URL a site wrote."""
    from mfgit.render.text import note_line, notes_text

    note = {"id": "n" * 64, "commit": "c" * 64, "adapter": "a" * 64, "name": f"auc{CSI}", "ok": False,
            "problem": f"bad{OSC0}", "values": {f"score\n{BIDI}": 0.5}, "timestamp": "2026-01-01T00:00:00Z",
            "measured_by": {"name": AUTHOR, "email": EMAIL, "site": SITE},
            "scorer": {"score": f"m:f{C1}", "data": CR}, "code": {"commit": "x", "remote_url": OSC8},
            "signature": {"status": "bad", "key_id": f"k{BIDI}", "reason": f"r{CSI}"}}
    line = note_line(note, with_commit=True)
    assert_clean(line, "note_line")
    assert "\n" not in line
    text = notes_text({"commit": "c" * 64, "notes": [note], "ok": False})
    assert_clean(text, "notes_text")
    assert len(text.splitlines()) == 12  # commit, note and its 10 fields, verdict: no field added a line


@pytest.mark.parametrize("field", ["name", "email", "site"])
def test_control_characters_in_names_are_refused(tmp_path, adapter_store, field):
    """A newline or an escape sequence in an author, email or site would forge log lines: refused at commit,
    and a crafted commit holding one is a malformed object on read (one line, nothing raw)."""
    from mfgit.objects.canonical import canonical_json

    hostile = f"Mallory {CSI}\nAuthor: Alice"
    author, email = (hostile, "m@x") if field == "name" else ("Mallory", hostile) if field == "email" else ("M", "m@x")
    cli, repo_dir, env = repo_as(tmp_path, author, email)
    if field == "site":
        cli = cli.with_env(MFGIT_SITE=hostile)
    line = cli.fails("commit", build_adapter(adapter_store, seed=1), "-m", "x", code=4)
    assert "control characters" in line
    assert_clean(line, "the refusal")
    clean = Cli(tmp_path / "home", repo_dir, isolated_env(tmp_path / "home"))
    clean.ok("commit", build_adapter(adapter_store, seed=1), "-m", "x")
    with in_process_env(clean.env):
        repo = Repository.open(repo_dir)
        d = repo.read_commit(repo.head()).to_dict()
        d["author" if field != "site" else "site"] = ({**d["author"], field: hostile} if field != "site" else hostile)
        cid = repo.store.put("commit", canonical_json(d))
        repo.refs.update("refs/heads/main", cid, repo.head(), who="test", message="crafted")
    res = clean("log")
    assert res.returncode == 5, res.stderr
    assert "malformed" in one_line_error(res.stderr)
    assert_clean(res.stderr + res.stdout, "log of a crafted commit")
