"""`export --card` with hostile participants: the model card stays exact data and inert text.

The card of a site commit and of a merge composite is written for commits
whose author is ``<script>``, whose message closes the code fence and opens
HTML and headings, whose base model (from adapter_config.json) holds a
newline, a ``---`` and a live ``<script>``, whose site and metadata hold
pipes and newlines that would break the tables. The card is then read as
the Hub reads it — `huggingface_hub.ModelCard` for the YAML front matter —
and its Markdown body rendered to HTML with markdown-it-py (CommonMark with
tables); no participant string may produce an element, a heading, a link,
a script or a table row, and the front matter must hold the exact base model.
"""

from __future__ import annotations

import html as htmllib
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mfgit.api.repository import Repository
from tests.conftest import build_adapter
from tests.test_output_escaping import repo_as
from tests.test_remote_sync import derive_adapter, in_process_env

SCRIPT = "<script>alert(1)</script>"
AUTHOR = f"{SCRIPT} <img src=x onerror=alert(2)> [click](http://evil.example) **bold**"
EMAIL = "x@evil.example> <a href='http://evil.example'>link</a"
FENCE_BREAK = "```\n</pre><script>alert(3)</script>\n# Injected heading\n```\n<div onclick=alert(4)>div</div>\n~~~"
MESSAGE = f"Release # {SCRIPT} [a](http://evil.example) `code` | pipe\n\n{FENCE_BREAK}\n\n## Another heading\n- list"
BASE = f"meta-llama/Llama-3\n---\n# {SCRIPT}\n<b>bold</b> | a | b |"
SITE = "hospital | with pipe | --- | --- | forged | row |"  # one-line fields hold no newline (the schema)
META = {"samples": 100, "notes\n# heading": f"```\n{SCRIPT}\n```", "pipe|key": "a | b"}


class Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def hostile_adapter(src: Path, dst: Path) -> Path:
    cfg_path = dst / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = BASE
    cfg_path.write_text(json.dumps(cfg))
    # Without the card PEFT wrote: the hostile name is the only base model on record.
    (dst / "README.md").unlink(missing_ok=True)
    return dst


@pytest.fixture(scope="module")
def cards(tmp_path_factory, adapter_store):
    root = tmp_path_factory.mktemp("card-injection")
    cli, repo_dir, env = repo_as(root, AUTHOR, EMAIL)
    one = derive_adapter(build_adapter(adapter_store, seed=1), root / "a1", change=0)
    two = derive_adapter(one, root / "a2")
    for d in (one, two):
        hostile_adapter(d, d)
    with in_process_env(env):
        repo = Repository.open(repo_dir)
        ids = []
        for name, adapter in (("a", one), ("b", two)):
            cli.ok("switch", "--orphan", f"sites/{name}")
            made = repo.commit(adapter, "placeholder", meta=["samples=100"])
            # What the site's own tooling may write: pipes in the site.
            c = made.commit
            crafted = type(c)(adapter=c.adapter, parents=(), author={"name": AUTHOR, "email": EMAIL}, site=f"{SITE} {name}",
                              timestamp=c.timestamp, message=MESSAGE, provenance={**c.provenance, "meta": META})
            cid = repo.put_commit(crafted)
            repo.refs.update(f"refs/heads/sites/{name}", cid, made.id, who="test", message="crafted")
            ids.append(cid)
        cli.ok("switch", "--orphan", "main")
        repo.merge(["sites/a", "sites/b"], weights=[0.5, 0.5], rank="sum", message=MESSAGE)
    out = {}
    for rev, kind in (("sites/a", "site"), ("main", "merge")):
        target = root / f"export-{kind}"
        cli.ok("export", rev, target, "--card")
        out[kind] = (target / "README.md").read_text(encoding="utf-8")
    return out


def _render(card_text: str):
    from huggingface_hub import ModelCard
    from markdown_it import MarkdownIt

    card = ModelCard(card_text)
    md = MarkdownIt("commonmark").enable("table")
    tokens = md.parse(card.text)
    return card, tokens, md.render(card.text)


def _walk(tokens):
    for t in tokens:
        yield t
        yield from _walk(t.children or [])


@pytest.mark.parametrize("kind", ["site", "merge"])
def test_card_front_matter_is_exact_yaml_data(cards, kind):
    card, _, _ = _render(cards[kind])
    # The recorded base model is not a Hub id: it is never written into the metadata.
    assert card.data.base_model is None
    assert card.data.base_model_relation == "adapter"
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    front = cards[kind].split("\n---\n", 1)[0].splitlines()
    assert front[0] == "---" and "<script>" not in "\n".join(front)
    assert [ln.split(":")[0] for ln in front[1:3]] == ["base_model_relation", "library_name"]


@pytest.mark.parametrize("kind", ["site", "merge"])
def test_card_body_makes_no_element_heading_link_or_script_from_participant_text(cards, kind):
    _, tokens, rendered = _render(cards[kind])
    types = [t.type for t in _walk(tokens)]
    assert "html_block" not in types and "html_inline" not in types
    assert "link_open" not in types and "image" not in types
    headings = ["".join(c.content for c in tokens[i + 1].children if c.type in ("text", "code_inline"))
                for i, t in enumerate(tokens) if t.type == "heading_open"]
    expected = ["Lineage"] + (["Merge recipe"] if kind == "merge" else [])
    assert headings[1:] == expected, headings
    assert tokens[0].type == "heading_open" and tokens[0].tag == "h1"
    first = headings[0]
    assert first == MESSAGE.splitlines()[0], first  # the subject, as text
    parser = Elements()
    parser.feed(rendered)
    allowed = {"h1", "h2", "p", "code", "pre", "table", "thead", "tbody", "tr", "th", "td"}
    assert set(parser.tags) <= allowed, set(parser.tags) - allowed
    assert parser.tags.count("pre") == 2  # the message, and the metadata or the recipe
    assert parser.tags.count("h1") == 1 and parser.tags.count("h2") == len(expected)
    # Every hostile string is there, as text.
    text = htmllib.unescape(rendered)
    for s in (SCRIPT, "<img src=x onerror=alert(2)>", "[click](http://evil.example)", "</pre><script>alert(3)</script>"):
        assert s in text, s


@pytest.mark.parametrize("kind", ["site", "merge"])
def test_card_tables_keep_their_rows(cards, kind):
    _, tokens, _ = _render(cards[kind])
    rows = []
    table = None
    for t in tokens:
        if t.type == "table_open":
            table = []
        elif t.type == "tr_open" and table is not None:
            table.append(0)
        elif t.type in ("td_open", "th_open") and table is not None:
            table[-1] += 1
        elif t.type == "table_close":
            rows.append(table)
            table = None
    summary = rows[0]
    assert len(summary) == 1 + 8 and set(summary) == {2}  # header and 8 rows of 2 cells: nothing broke out
    if kind == "merge":
        leaves = rows[1]
        assert len(leaves) == 1 + 2 and set(leaves) == {5}


def test_card_renders_participant_fields_escaped(cards):
    from mfgit.render.escape import markdown, markdown_block, markdown_code

    card = cards["site"]
    assert markdown(f"{SITE} a") in card and "\\| forged \\| row \\|" in card
    assert markdown_code(BASE) in card
    fenced = markdown_block(MESSAGE.rstrip(), "text")
    assert fenced in card and fenced.startswith("````text\n")  # one backtick longer than the message's fences
    for s in (AUTHOR, f"{SITE} a", BASE):  # one-line fields: never raw, so never a second line
        assert s not in card


# -- property: any participant text, through each escaper, renders as exactly that text -----------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_hostile_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["<script>alert(1)</script>", "```\n# h\n", "[x](http://e.example)", "| a | b |\n|---|---|", "---\nk: v",
     "&lt;b&gt;", "\\", "`", "<!-- c -->", "\u202egnp.exe"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_hostile_text, _hostile_text)
def test_any_text_in_a_heading_cell_code_and_front_matter_stays_text(a, b):
    import yaml
    from markdown_it import MarkdownIt

    from mfgit.render.escape import markdown, markdown_block, markdown_code, terminal, yaml_dump

    doc = (f"---\n{yaml_dump({'author': a, 'site': b})}---\n\n# {markdown(a)}\n\n"
           f"| key | value |\n|---|---|\n| {markdown(a)} | {markdown_code(b, table=True)} |\n\n"
           f"{markdown_block(a + chr(10) + b)}\n\n## Lineage\n")
    front, body = doc[4:].split("\n---\n", 1)
    assert yaml.safe_load(front) == {"author": a, "site": b}
    tokens = MarkdownIt("commonmark").enable("table").parse(body)
    types = [t.type for t in _walk(tokens)]
    assert "html_block" not in types and "html_inline" not in types
    assert "link_open" not in types and "image" not in types
    # exactly one h1, one table row of two cells, one fence, then our own h2
    assert [t.tag for t in tokens if t.type == "heading_open"] == ["h1", "h2"]
    assert sum(t.type == "tr_open" for t in tokens) == 2 and sum(t.type == "fence" for t in tokens) == 1
    heading = "".join(c.content for c in tokens[1].children if c.type in ("text", "code_inline"))
    assert heading == terminal(a).strip()
