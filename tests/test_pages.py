"""`mfgit pages OUT`: static pages of a hub clone — sites, commits, merges, lineage, diffs, notes.

Three sites push real PEFT adapters to a bare hub (site a signs its commits,
site c pushes a second version); a coordinator clones the hub, merges the
three sites on main and pushes it; site a attaches a signed note to the
composite, site b an unsigned one. Participants write hostile text — a
``<script>`` in a message, an author, a site name, a metadata value and a note
name, a bidi override, an escape sequence — which every page must show as
text. The pages are checked as HTML and opened in headless Chromium: no
script runs, nothing is requested from the network, the graph has its nodes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.browser import graph_shape, headless_chromium, severe_errors
from tests.conftest import Cli, build_adapter

HOSTILE_MESSAGE = "site a round 1 <script>window.__pwned = 'message'</script> \u202eevil\u202c \x1b[31mred"
HOSTILE_AUTHOR = "<script>window.__pwned='author'</script>Bob"
HOSTILE_SITE = "<img src=x onerror=\"window.__pwned='site'\">c"
HOSTILE_META = "<a href=\"https://evil.example/\">click</a><script>window.__pwned='meta'</script>"
HOSTILE_NOTE = "<script>window.__pwned='note'</script>b-val"
HOSTILE_TAG = "rel<b>\"it's\"&amp;"
SCRIPT_TEXT = "<script>window.__pwned = 'message'</script>"


def _in_process_env(cli: Cli):
    mp = pytest.MonkeyPatch()
    for k in [k for k in os.environ if k.startswith("MFGIT_")]:
        mp.delenv(k)
    for k, v in cli.env.items():
        if k.startswith("MFGIT_"):
            mp.setenv(k, v)
    return mp


@pytest.fixture(scope="module")
def world(tmp_path_factory, adapter_store):
    from mfgit.api.notes import make_note
    from mfgit.api.repository import Repository
    from mfgit.audit.keys import load_signing_key
    from mfgit.repo import notes as notes_api

    root = tmp_path_factory.mktemp("pages")
    cli = Cli(root / "home", root)
    hub = root / "hub.mfgit"
    cli.ok("init", "--bare", hub)
    keys = root / "keys"
    cli.ok("keygen", keys / "site-a")
    sites = {}
    for i, s in enumerate("abc"):
        repo = root / f"site-{s}"
        cli.ok("init", repo)
        c = cli.at(repo).with_env(MFGIT_AUTHOR_NAME=HOSTILE_AUTHOR if s == "b" else f"team {s}")
        c.ok("config", "site", HOSTILE_SITE if s == "c" else s)
        c.ok("remote", "add", "origin", hub)
        c.ok("switch", "--orphan", f"sites/{s}")
        args = ["--meta", "samples=120", "--meta", f"comment={HOSTILE_META}"] if s == "a" else ["--meta", "samples=80"]
        if s == "a":
            c.ok("config", "signing.key", keys / "site-a")
            args.append("--sign")
        c.ok("commit", build_adapter(adapter_store, seed=70 + i), "-m", HOSTILE_MESSAGE if s == "a" else f"site {s}", *args)
        if s == "c":  # a second version: one module changed (a diff against the parent)
            from safetensors.torch import load_file, save_file

            v2 = root / "c2"
            shutil.copytree(build_adapter(adapter_store, seed=72), v2)
            t = load_file(str(v2 / "adapter_model.safetensors"))
            key = next(k for k in sorted(t) if k.endswith("layers.0.self_attn.v_proj.lora_B.weight"))
            t[key] = t[key] * 3 + 0.01
            save_file(t, str(v2 / "adapter_model.safetensors"), metadata={"format": "pt"})
            c.ok("commit", v2, "-m", "site c round 2: retrained v_proj")
        c.ok("push", "origin", f"sites/{s}")
        sites[s] = c

    coord_dir = root / "coordinator"
    cli.ok("clone", hub, coord_dir)
    coord = cli.at(coord_dir)
    coord.ok("config", "site", "coordinator")
    coord.ok("switch", "--orphan", "main")
    coord.ok("merge", "origin/sites/a", "origin/sites/b", "origin/sites/c", "--weights", "0.5,0.3,0.2",
             "--rank", "sum", "-m", "composite of three sites")
    coord.ok("push", "origin", "main")
    coord.ok("tag", HOSTILE_TAG, "main")  # ref names may hold < > " ' &
    merge_id = coord.json("show", "main", "--json")["id"]

    mp = _in_process_env(cli)
    try:
        for s, name, key in (("a", "a-val", load_signing_key(keys / "site-a")), ("b", HOSTILE_NOTE, None)):
            repo = Repository.open(root / f"site-{s}")
            repo.fetch("origin")
            note = make_note(repo, merge_id, name, {"acc": 0.91 if s == "a" else 0.5, "loss": 0.2}, key=key)
            notes_api.add_notes(repo, [note])
            repo.push_notes("origin")
        coord_repo = Repository.open(coord_dir)
        coord_repo.fetch("origin")
        coord_repo.fetch_notes("origin")
    finally:
        mp.undo()
    # The coordinator's policy: site a's key speaks for sites/a (its note is trusted; b's unsigned one is not).
    (coord_dir / ".mfgit" / "allowed_signers").write_text(
        f"sites/a {(keys / 'site-a.pub').read_text().strip()}\n")
    out = root / "pages"
    res = coord.ok("pages", out)
    ids = {r: coord.json("show", r, "--json")["id"]
           for r in ("main", "origin/sites/a", "origin/sites/b", "origin/sites/c", "origin/sites/c~1")}
    return {"root": root, "cli": coord, "out": out, "ids": ids, "merge": merge_id, "stdout": res.stdout}


class _Doc(HTMLParser):
    """Elements with their attributes, and the text, of one page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.elements if t == tag and all(
            v in (a.get(k) or "").split() for k, v in attrs.items())]


def _page(world, rel: str) -> tuple[str, _Doc]:
    text = (world["out"] / rel).read_text(encoding="utf-8")
    return text, _Doc(text)


def _pages(world) -> list[Path]:
    return sorted(world["out"].rglob("*.html"))


def test_cli_writes_an_index_and_a_page_per_commit(world):
    out, ids = world["out"], world["ids"]
    assert "Wrote 5 commit pages" in world["stdout"] and "index.html" in world["stdout"]
    assert (out / "index.html").is_file() and (out / ".mfgit-pages").is_file()
    assert {p.name for p in (out / "commits").iterdir()} == {f"{c}.html" for c in ids.values()}
    _, index = _page(world, "index.html")
    hrefs = {a["href"] for a in index.all("a")}
    assert {f"commits/{c}.html" for c in ids.values()} <= hrefs
    text = "".join(index.text)
    for s in ("site a", "site b", "origin/sites/a", "origin/sites/c", "main", "composite of three sites"):
        assert s in text
    # Every link goes to a page that exists.
    for page in _pages(world):
        for a in _Doc(page.read_text(encoding="utf-8")).all("a"):
            target = (page.parent / a["href"]).resolve()
            assert target.is_file(), (page, a["href"])


def test_merge_page_shows_recipe_effective_weights_lineage_and_notes(world):
    ids = world["ids"]
    text, doc = _page(world, f"commits/{ids['main']}.html")
    body = "".join(doc.text)
    assert "Merge recipe" in body and "linear" in body and "composite of three sites" in body
    # Effective weights of the three site commits, from the lineage.
    weights = re.findall(r'<td class="weight">([^<]*)</td>', text)
    assert sorted(weights) == ["0.2", "0.3", "0.5"]
    # The graph: one merge and three leaves, each a link to its commit's page.
    nodes = doc.all("g", **{"class": "node"})
    assert len(nodes) == 4 and len(doc.all("g", **{"class": "edge"})) == 3
    assert {n["data-id"] for n in nodes} == {ids[r] for r in ("main", "origin/sites/a", "origin/sites/b", "origin/sites/c")}
    # Notes: a's signed note is trusted, b's unsigned one is shown as untrusted with why.
    trusted = doc.all("tr", **{"class": "trusted"})
    untrusted = doc.all("tr", **{"class": "untrusted"})
    assert len(trusted) == 1 and len(untrusted) == 1
    assert "unsigned: a note counts only when signed" in body and "a-val" in body
    # Per-module diff bars against each input.
    assert body.count("against ") == 3 and len(doc.all("td", **{"class": "bar"})) >= 3


def test_commit_pages_show_signature_provenance_metadata_and_diff(world):
    ids = world["ids"]
    _, doc = _page(world, f"commits/{ids['origin/sites/a']}.html")
    body = "".join(doc.text)
    assert "good signature" in body and "SHA256:" in body and "sites/a" in body
    assert "samples" in body and "120" in body and "Metadata" in body
    assert "merged into" in body and "with weight 0.5" in body and "composite of three sites" in body
    _, doc = _page(world, f"commits/{ids['origin/sites/b']}.html")
    assert "unsigned" in "".join(doc.text)
    _, doc = _page(world, f"commits/{ids['origin/sites/c']}.html")
    body = "".join(doc.text)
    assert "against first parent" in body and "1 changed" in body
    changed = doc.all("tr", **{"class": "changed"})
    assert len(changed) == 1
    _, doc = _page(world, f"commits/{ids['origin/sites/c~1']}.html")
    assert "first commit of its branch" in "".join(doc.text)


def test_index_has_the_notes_table_per_composite(world):
    text, doc = _page(world, "index.html")
    section = text[text.index('id="evaluations"'):]
    section = section[:section.index("</section>")]
    assert "a-val" in section and "0.91" in section and "0.5" in section
    assert section.count('class="badge untrusted"') >= 2  # b's acc and loss, each marked
    assert "&lt;script&gt;window.__pwned=&#x27;note&#x27;&lt;/script&gt;b-val" in section


def test_user_text_is_escaped_everywhere(world):
    ids = world["ids"]
    for page in _pages(world):
        text = page.read_text(encoding="utf-8")
        assert "<script" not in text.lower(), page  # no script element at all, hostile or ours
        doc = _Doc(text)
        # No element carries an event handler, and none came from a participant's text.
        assert not [(t, k) for t, a in doc.elements for k in a if k.lower().startswith("on")], page
        assert not doc.all("img") and not [a for t, a in doc.elements if "evil.example" in (a.get("href") or "")]
        assert "\u202e" not in text and "\x1b" not in text, page
    text, doc = _page(world, f"commits/{ids['origin/sites/a']}.html")
    assert "&lt;script&gt;window.__pwned = &#x27;message&#x27;&lt;/script&gt;" in text
    assert "\\u202eevil" in text and "\\x1b[31mred" in text  # shown as visible escapes
    assert SCRIPT_TEXT in "".join(doc.text)  # the text a reader sees is the message itself
    assert "&lt;a href=&quot;https://evil.example/&quot;&gt;" in text  # the metadata value, as text
    escaped_tag = "rel&lt;b&gt;&quot;it&#x27;s&quot;&amp;amp;"
    text, doc = _page(world, "index.html")
    assert escaped_tag in text and HOSTILE_TAG in "".join(doc.text)
    assert escaped_tag in _page(world, f"commits/{ids['main']}.html")[0]
    text, _ = _page(world, f"commits/{ids['origin/sites/b']}.html")
    assert "&lt;script&gt;window.__pwned=&#x27;author&#x27;&lt;/script&gt;Bob" in text
    text, _ = _page(world, f"commits/{ids['origin/sites/c']}.html")
    assert "&lt;img src=x onerror=&quot;window.__pwned=&#x27;site&#x27;&quot;&gt;c" in text


def test_pages_load_nothing(world):
    for page in _pages(world):
        doc = _Doc(page.read_text(encoding="utf-8"))
        for tag, attrs in doc.elements:
            for name in ("src", "href", "xlink:href", "action", "data", "poster", "srcset"):
                value = attrs.get(name)
                if value is not None:
                    assert not re.match(r"^\s*(https?:|//|data:|javascript:)", value, re.I), (page, tag, name, value)
        assert not doc.all("link") and not doc.all("script") and not doc.all("iframe") and not doc.all("img")
        csp = [a for t, a in doc.elements if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
        assert csp and "default-src 'none'" in csp[0]["content"] and "script-src" not in csp[0]["content"]
        assert "@import" not in page.read_text(encoding="utf-8") and "url(http" not in page.read_text(encoding="utf-8")


def test_rewrite_replaces_the_pages_and_refuses_foreign_directories(world, tmp_path):
    cli, out = world["cli"], world["out"]
    (out / "stale.html").write_text("old")
    cli.ok("pages", out, "--quiet")
    assert not (out / "stale.html").exists() and (out / "index.html").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]
    report = cli.json("pages", out, "--json")
    assert report["commits"] == 5 and report["sites"] == 3 and report["notes"] == 2
    # A directory mfgit pages did not write is never replaced.
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    line = cli.fails("pages", foreign, code=4)
    assert "not written by mfgit pages" in line and "give a new or empty directory" in line
    assert (foreign / "thesis.tex").read_text() == "years of work" and len(list(foreign.iterdir())) == 1
    afile = tmp_path / "file.html"
    afile.write_text("x")
    assert "not a directory" in cli.fails("pages", afile, code=4)
    assert afile.read_text() == "x"
    link = tmp_path / "link"
    link.symlink_to(foreign, target_is_directory=True)
    assert "symbolic link" in cli.fails("pages", link, code=4)
    assert (foreign / "thesis.tex").read_text() == "years of work"
    empty = tmp_path / "empty"
    empty.mkdir()
    cli.ok("pages", empty)
    assert (empty / "index.html").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_progress_on_a_terminal_only(world):
    from tests.test_progress_tty import _run

    cli, out = world["cli"], world["out"]
    code, err = _run(cli, cli.cwd, ["pages", out], tty=True)
    assert code == 0 and "writing pages" in err
    for args, tty in ((["pages", out], False), (["pages", out, "--quiet"], True)):
        code, err = _run(cli, cli.cwd, args, tty=tty)
        assert code == 0 and err.strip() == "", err


def test_python_api_with_progress(world, tmp_path):
    from mfgit.api.repository import Repository

    mp = _in_process_env(world["cli"])
    try:
        seen = []
        report = Repository.open(world["cli"].cwd).pages(tmp_path / "api-pages", progress=lambda *a: seen.append(a))
    finally:
        mp.undo()
    assert report["commits"] == 5 and [s[0] for s in seen] == [1, 2, 3, 4, 5] and {s[1] for s in seen} == {5}
    assert json.loads((tmp_path / "api-pages" / ".mfgit-pages").read_text())["written_by"] == "mfgit pages"


def test_pages_in_headless_chromium(world, tmp_path):
    ids, out = world["ids"], world["out"]
    with headless_chromium(tmp_path) as browser:
        from selenium.webdriver.common.by import By

        browser.get((out / "index.html").as_uri())
        assert browser.title.startswith("mfgit: ")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#sites .site")) == 3
        assert browser.find_elements(By.CSS_SELECTOR, "#evaluations table.notes tr")
        browser.save_screenshot(str(tmp_path / "index.png"))
        assert (tmp_path / "index.png").stat().st_size > 10_000
        # Navigate by the link, as a reader does.
        browser.find_element(By.CSS_SELECTOR, f'#branches a[href="commits/{ids["main"]}.html"]').click()
        assert browser.current_url.endswith(f"commits/{ids['main']}.html")
        assert graph_shape(browser) == (4, 3)  # the composite and its three site commits, drawn
        assert len(browser.find_elements(By.CSS_SELECTOR, "#merge table.leaves tr.leaf")) == 3
        assert len(browser.find_elements(By.CSS_SELECTOR, "#notes tr.note.untrusted")) == 1
        bars = browser.find_elements(By.CSS_SELECTOR, "#diff td.bar span")
        assert bars and all(b.size["height"] > 5 for b in bars)
        shot = tmp_path / "merge.png"
        browser.set_window_size(1400, min(6000, browser.execute_script("return document.body.scrollHeight") + 140))
        browser.save_screenshot(str(shot))  # the whole page
        browser.set_window_size(1400, 1000)
        assert shot.stat().st_size > 10_000
        # A graph node leads to the site commit's page; its hostile message is text, and nothing ran.
        browser.find_element(By.CSS_SELECTOR, f'svg#graph a g.node[data-id="{ids["origin/sites/a"]}"]').click()
        assert browser.current_url.endswith(f"commits/{ids['origin/sites/a']}.html")
        assert SCRIPT_TEXT in browser.find_element(By.CSS_SELECTOR, "pre.message").text
        assert "window.__pwned='meta'" in browser.find_element(By.CSS_SELECTOR, "table.meta").text
        for url in [(out / "index.html").as_uri()] + [p.as_uri() for p in (out / "commits").iterdir()]:
            browser.get(url)
            state = browser.execute_script(
                "return {pwned: window.__pwned === undefined ? null : String(window.__pwned),"
                " scripts: document.scripts.length, imgs: document.images.length,"
                " resources: performance.getEntriesByType('resource').map(function(e){ return e.name; }),"
                " noscript: document.body.innerText.length}")
            assert state["pwned"] is None and state["scripts"] == 0 and state["imgs"] == 0, (url, state)
            assert state["resources"] == [], (url, state)  # nothing fetched: no font, no CSS, no image
            assert state["noscript"] > 100  # the text is there without any script
        assert not severe_errors(browser)


def _entry(cid: str) -> dict:
    return {
        "id": cid, "kind": "commit", "notes": [], "diffs": [], "attachments": None,
        "signatures": [{"branch": "sites/a", "ok": True, "status": "unsigned", "key_id": None,
                        "reason": "not signed (branch not protected)"}],
        "adapter": {"id": "12" * 32, "modules": 1, "ranks": [4], "dtypes": ["F32"], "base_model": {"name": "m"}},
        "commit": {"adapter": "12" * 32, "parents": [], "author": {"name": "a", "email": "a@x"}, "site": "a",
                   "timestamp": "2026-01-01T00:00:00.000000Z", "message": "m", "provenance": {"kind": "import"}},
    }


def test_attachments_are_shown_when_a_commit_records_them_and_escaped():
    """Rendering only: a commit whose format records attachments (name → record), hostile names included."""
    from mfgit.render.pages import commit_page

    cid = "ab" * 32
    entry = _entry(cid)
    entry["attachments"] = {
        "task": {"id": "cd" * 32, "size": 812, "private": False},
        "<script>window.__pwned='attachment'</script>": {"digest": "ef" * 32, "size": 9, "private": True}}
    doc = {"commits": {cid: {}}, "tips": {}}
    text = commit_page(entry, doc)
    section = text[text.index('id="attachments"'):]
    assert "task" in section and "812" in section and "private: true" in section
    assert "&lt;script&gt;window.__pwned=&#x27;attachment&#x27;&lt;/script&gt;" in section
    assert "<script" not in text
    entry["attachments"] = None
    assert 'id="attachments"' not in commit_page(entry, doc)


def test_directory_is_replaced_where_no_atomic_exchange_exists(world, tmp_path, monkeypatch):
    """Without renameat2 (another system, another file system): moved aside, replaced, removed."""
    from mfgit.api.repository import Repository
    from mfgit.store import fileio

    monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    out = tmp_path / "pages"
    mp = _in_process_env(world["cli"])
    try:
        repo = Repository.open(world["cli"].cwd)
        repo.pages(out)
        (out / "old.txt").write_text("from the last run")
        repo.pages(out)
    finally:
        mp.undo()
    assert (out / "index.html").is_file() and not (out / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pages"]


def test_a_repository_without_commits_has_an_index(tmp_path):
    cli = Cli(tmp_path / "home", tmp_path)
    cli.ok("init", tmp_path / "repo")
    res = cli.at(tmp_path / "repo").ok("pages", tmp_path / "out")
    assert "Wrote 0 commit pages" in res.stdout
    text = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "No site branches" in text and "No evaluation notes yet" in text


def test_notes_that_fail_their_checks_still_render_as_untrusted():
    """A note with no values, values of the wrong shape, no site: shown, marked, and the pages still render."""
    from mfgit.render.pages import commit_page, index_page

    cid = "ab" * 32
    notes = [{"id": "01" * 32, "ok": False, "problem": "the note object is missing",
              "signature": {"status": "unsigned", "reason": "missing", "key_id": None},
              "trust": {"trusted": False, "reason": "the note fails its checks: the note object is missing"}},
             {"id": "02" * 32, "ok": False, "name": "x-val", "values": [1, 2], "measured_by": "someone",
              "trust": {"trusted": False, "reason": "the note fails its checks: the note has no values"}}]
    entry = _entry(cid)
    entry["notes"] = notes
    doc = {"commits": {cid: {"kind": "commit", "site": "a", "subject": "m", "author": {"name": "a", "email": "e"},
                             "timestamp": "2026-01-01T00:00:00.000000Z", "strategy": None}},
           "tips": {}, "notes": {cid: notes}, "branches": [], "tags": [], "repository": "r",
           "generated": "2026-01-01T00:00:00.000000Z", "version": "0", "policy": {"source": None, "error": None}}
    page = commit_page(entry, doc)
    assert page.count('class="note untrusted"') == 2 and "the note object is missing" in page
    index = index_page(doc)
    assert "x-val" in index and 'class="badge untrusted"' in index


def test_a_missing_adapter_is_shown_on_the_pages_not_fatal(world, tmp_path):
    """Damage (here: site b's adapter manifest gone) is reported where it matters; fsck is the tool to repair it."""
    cli, ids = world["cli"], world["ids"]
    copy = tmp_path / "damaged"
    shutil.copytree(cli.cwd, copy, symlinks=True)
    adapter = cli.json("show", ids["origin/sites/b"], "--json")["commit"]["adapter"]
    (copy / ".mfgit" / "objects" / adapter[:2] / adapter[2:]).unlink()
    cli.at(copy).ok("pages", tmp_path / "out")
    text, _ = _page({"out": tmp_path / "out"}, f"commits/{ids['origin/sites/b']}.html")
    assert "missing" in text or "not found" in text
    text, _ = _page({"out": tmp_path / "out"}, f"commits/{ids['main']}.html")
    assert "cannot compare" in text


def test_pages_of_the_bare_hub_itself(world, tmp_path):
    """Run where the hub is (a bare repository): sites are its own branches; with no policy there, no note is trusted."""
    hub = world["root"] / "hub.mfgit"
    report = world["cli"].at(hub).json("pages", tmp_path / "hub-pages", "--json")
    assert report["commits"] == 5 and report["sites"] == 3 and report["notes"] == 2
    text, doc = _page({"out": tmp_path / "hub-pages"}, "index.html")
    assert "no allowed-signers policy" in text and [b for b in doc.text if b == "sites/a"]
    page, _ = _page({"out": tmp_path / "hub-pages"}, f"commits/{world['merge']}.html")
    assert page.count('class="note untrusted"') == 2
