"""A Hub snapshot's model card: its front matter is kept with the commit and written back by export --card."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from huggingface_hub import ModelCard

from mfgit.api.repository import Repository
from mfgit.formats.hubcard import front_matter
from tests.conftest import build_adapter

CARD = """---
base_model: meta-llama/Llama-3.2-1B
license: apache-2.0
datasets:
- imdb
language: [en]
tags: [sentiment, lora]
---

# A site adapter

Trained on reviews.
"""


@pytest.fixture
def snapshot(tmp_path, adapter_store):
    d = tmp_path / "snapshot"
    shutil.copytree(build_adapter(adapter_store, "a"), d)
    (d / "README.md").write_text(CARD, encoding="utf-8")
    # The base model was loaded from disk: PEFT recorded its path; the card names its Hub id.
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "/models/Llama-3.2-1B"
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    return d


def test_card_front_matter_is_kept_with_the_commit(repo_dir, snapshot):
    repo = Repository.open(repo_dir)
    info = repo.commit(snapshot, "snapshot")
    card = repo.read_commit(info.id).provenance["card"]
    assert card == {"base_model": "meta-llama/Llama-3.2-1B", "license": "apache-2.0", "datasets": ["imdb"],
                    "language": ["en"], "tags": ["sentiment", "lora"]}


def test_a_commit_without_a_card_records_no_card_field(repo_dir, tmp_path, adapter_store):
    d = tmp_path / "plain"
    shutil.copytree(build_adapter(adapter_store, "a"), d)
    (d / "README.md").unlink(missing_ok=True)
    repo = Repository.open(repo_dir)
    info = repo.commit(d, "plain")
    assert "card" not in repo.read_commit(info.id).provenance


def test_export_writes_the_card_metadata_back(cli, repo_dir, snapshot, tmp_path):
    Repository.open(repo_dir).commit(snapshot, "snapshot")
    cli.ok("export", "HEAD", tmp_path / "out", "--card", cwd=repo_dir)
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model == "meta-llama/Llama-3.2-1B"
    assert card.data.license == "apache-2.0" and card.data.datasets == ["imdb"] and card.data.language == ["en"]
    assert card.data.base_model_relation == "adapter" and card.data.library_name == "peft"
    assert card.data.tags[:2] == ["sentiment", "lora"] and "mfgit" in card.data.tags
    assert card.data.tags.count("lora") == 1


@pytest.mark.parametrize("text", [
    "no front matter\n",
    "---\nlicense: [unclosed\n---\n",
    "---\n- a list\n---\n",
    "---\nlicense: mit\n",  # never closed
    "---\na: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n---\n",
])
def test_a_card_without_usable_front_matter_is_no_metadata(text):
    assert front_matter(text) is None


def test_card_values_that_are_not_json_become_text():
    got = front_matter("---\ndate: 2024-01-02\nbig: 123456789012345678901234567890\nx: .nan\n---\n")
    assert got == {"date": "2024-01-02", "big": "123456789012345678901234567890", "x": "nan"}


# --- the card as an attachment, and the Hub conventions out: the real CLI on real PEFT adapters ----------

HUB_ID = "meta-llama/Llama-3.2-1B"


def hub_snapshot(root, seed: int, card: str = CARD, base_path: str = "/models/Llama-3.2-1B"):
    """A real PEFT adapter of the tiny Llama laid out as a Hub snapshot: its card, and the local
    path PEFT records when the base model was loaded from disk."""
    from tests.adapters import make_lora_adapter

    d = make_lora_adapter(root / f"snapshot-{seed}", seed=seed)
    (d / "README.md").write_text(card, encoding="utf-8")
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = base_path
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    return d


def test_the_card_is_one_public_attachment_and_no_file_of_the_adapter(cli, repo_dir, tmp_path):
    snap = hub_snapshot(tmp_path, 1)
    info = cli.json("commit", snap, "-m", "site a", "--json", cwd=repo_dir)
    repo = Repository.open(repo_dir)
    commit = repo.read_commit(info["id"])
    [entry] = commit.attachments
    assert entry["name"] == "README.md" and entry["private"] is False
    assert entry["size"] == len(CARD.encode()) and repo.store.has(entry["id"])
    assert "README.md" not in repo.read_adapter(commit.adapter).files  # stored once: as the attachment
    assert cli.ok("attachments", "HEAD", "README.md", cwd=repo_dir).stdout == CARD
    assert commit.provenance["card"]["base_model"] == HUB_ID
    # A second commit of the unchanged directory is nothing new (the stat cache sees it as committed).
    assert "nothing to commit" in cli.fails("commit", snap, "-m", "again", cwd=repo_dir)
    assert cli.json("status", "--json", cwd=repo_dir)["sources"][0]["state"] == "unchanged"


def test_checkout_writes_the_card_back_beside_the_adapter_once(cli, repo_dir, tmp_path):
    snap = hub_snapshot(tmp_path, 2)
    cli.ok("commit", snap, "-m", "site a", cwd=repo_dir)
    out = tmp_path / "out"
    cli.ok("checkout", "HEAD", "--to", out, "--with-attachments", cwd=repo_dir)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert (out / "README.md").read_bytes() == (snap / "README.md").read_bytes()
    # checkout writes the config as committed, path and all: it is export that publishes.
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "/models/Llama-3.2-1B"


def test_a_card_edited_alone_is_a_new_commit_of_the_same_adapter(cli, repo_dir, tmp_path):
    snap = hub_snapshot(tmp_path, 3)
    first = cli.json("commit", snap, "-m", "one", "--json", cwd=repo_dir)
    (snap / "README.md").write_text(CARD.replace("apache-2.0", "mit"), encoding="utf-8")
    assert cli.json("status", "--json", cwd=repo_dir)["sources"][0]["state"] == "modified"  # the card is not HEAD's
    second = cli.json("commit", snap, "-m", "card edited", "--json", cwd=repo_dir)
    assert second["adapter"] == first["adapter"] and second["id"] != first["id"]
    assert Repository.open(repo_dir).read_commit(second["id"]).provenance["card"]["license"] == "mit"
    assert cli.json("status", "--json", cwd=repo_dir)["sources"][0]["state"] == "unchanged"


def test_a_card_and_an_attached_readme_are_refused_together(cli, repo_dir, tmp_path):
    snap = hub_snapshot(tmp_path, 4)
    other = tmp_path / "other.md"
    other.write_text("another card\n")
    for flag in ("--attach", "--attach-private"):
        line = cli.fails("commit", snap, "-m", "two cards", flag, f"README.md={other}", cwd=repo_dir, code=4)
        assert "README.md" in line and "model card" in line and len(line.strip().splitlines()) == 1
    assert Repository.open(repo_dir).head() is None


def _lora_tensors(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def test_the_exported_snapshot_loads_with_peft_and_its_card_reads_as_the_hubs(cli, repo_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    from tests.adapters import tiny_llama

    snap = hub_snapshot(tmp_path, 5)
    cli.ok("commit", snap, "-m", "site a", cwd=repo_dir)
    out = tmp_path / "published"
    r = cli("export", "HEAD", out, "--card", cwd=repo_dir)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == HUB_ID  # the card's Hub id, never the local path
    assert "/models/" not in (out / "adapter_config.json").read_text()
    model = PeftModel.from_pretrained(tiny_llama(), str(out))
    assert model.peft_config["default"].base_model_name_or_path == HUB_ID
    saved = load_file(str(snap / "adapter_model.safetensors"))
    loaded = _lora_tensors(model)
    assert len(saved) == len(loaded) > 0
    for name, t in saved.items():
        key = name.replace(".weight", ".default.weight")
        assert torch.equal(loaded[key], t), name
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == HUB_ID and card.data.base_model_relation == "adapter"
    assert card.data.license == "apache-2.0" and card.data.datasets == ["imdb"] and card.data.language == ["en"]
    assert card.data.tags[:2] == ["sentiment", "lora"] and "mfgit" in card.data.tags
    assert card.data.library_name == "peft"
    # The site's own text is written back after mfgit's record.
    assert "# A site adapter" in card.text and "Trained on reviews." in card.text
    assert card.text.index("## Lineage") < card.text.index("Trained on reviews.")


def test_export_names_the_base_model_id_given_and_never_writes_a_path(cli, repo_dir, tmp_path):
    no_base = CARD.replace(f"base_model: {HUB_ID}\n", "")
    cli.ok("commit", hub_snapshot(tmp_path, 6, card=no_base), "-m", "site a", cwd=repo_dir)
    r = cli("export", "HEAD", tmp_path / "unnamed", "--card", cwd=repo_dir)
    assert r.returncode == 0 and "base_model_name_or_path" in r.stderr and "--base-model-id" in r.stderr
    assert json.loads((tmp_path / "unnamed" / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    assert ModelCard.load(tmp_path / "unnamed" / "README.md").data.base_model is None
    cli.ok("export", "HEAD", tmp_path / "named", "--base-model-id", "org/base-1b", cwd=repo_dir)
    assert json.loads((tmp_path / "named" / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/base-1b"
    # Without --card the committed card is published: its text, its front matter to the Hub's conventions.
    card = ModelCard.load(tmp_path / "named" / "README.md")
    assert card.data.base_model == "org/base-1b" and card.data.base_model_relation == "adapter"
    assert card.data.license == "apache-2.0" and card.data.library_name == "peft"
    assert card.text.strip() == no_base.split("---\n", 2)[2].strip()


def test_export_never_publishes_the_local_path_of_the_card_peft_wrote(cli, repo_dir, tmp_path):
    from tests.adapters import make_lora_adapter

    snap = make_lora_adapter(tmp_path / "saved", seed=10)
    # PEFT's own card names the base model as it was loaded: here, from disk.
    text = (snap / "README.md").read_text(encoding="utf-8").replace("tiny-llama-test", "/models/tiny-llama")
    (snap / "README.md").write_text(text, encoding="utf-8")
    cfg = json.loads((snap / "adapter_config.json").read_text())
    (snap / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "/models/tiny-llama"}))
    cli.ok("commit", snap, "-m", "saved by PEFT", cwd=repo_dir)
    assert Repository.open(repo_dir).read_commit(Repository.open(repo_dir).head()).provenance["card"][
        "base_model"] == "/models/tiny-llama"
    for args in ([], ["--card"]):
        out = tmp_path / f"out{len(args)}"
        r = cli("export", "HEAD", out, *args, cwd=repo_dir)
        assert r.returncode == 0 and "--base-model-id" in r.stderr
        assert "/models/tiny-llama" not in (out / "adapter_config.json").read_text()
        front = (out / "README.md").read_text(encoding="utf-8").split("\n---\n", 1)[0]
        assert "/models/" not in front and ModelCard.load(out / "README.md").data.base_model is None
    # checkout gives back what was committed.
    cli.ok("checkout", "HEAD", "--to", tmp_path / "back", cwd=repo_dir)
    assert (tmp_path / "back" / "README.md").read_text(encoding="utf-8") == text


def test_a_composite_card_names_the_sites_base_model_and_lists_the_merged_adapters(cli, repo_dir, tmp_path):
    from peft import PeftModel

    from tests.adapters import tiny_llama

    for site, seed, data in (("a", 7, "imdb"), ("b", 8, "sst2")):
        cli.ok("switch", "--orphan", f"sites/{site}", cwd=repo_dir)
        card = CARD.replace("- imdb", f"- {data}")
        cli.ok("commit", hub_snapshot(tmp_path, seed, card=card), "-m", f"site {site}", cwd=repo_dir)
    cli.ok("switch", "--orphan", "main", cwd=repo_dir)
    merged = cli.json("merge", "sites/a", "sites/b", "--weights", "0.5,0.5", "-m", "round 1", "--json", cwd=repo_dir)
    out = tmp_path / "composite"
    r = cli("export", "HEAD", out, "--card", cwd=repo_dir)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == HUB_ID and card.data.base_model_relation == "adapter"
    assert "merge" in card.data.tags and card.data.library_name == "peft"
    # What the sites' cards agree on is the composite's: their datasets, their one license.
    assert card.data.datasets == ["imdb", "sst2"] and card.data.license == "apache-2.0"
    assert card.data.language == ["en"]
    for leaf in merged["provenance"]["leaves"]:
        assert leaf["commit"][:10] in card.text
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    PeftModel.from_pretrained(tiny_llama(), str(out))


HOSTILE_CARD = """---
base_model: "meta-llama/Llama-3.2-1B\\n---\\n<script>alert(1)</script>"
license: "mit\\n<script>alert(2)</script>"
tags: ["<img src=x onerror=alert(3)>"]
---

# Card

<script>alert(4)</script>
<div onclick="alert(5)">click</div> and <b>bold</b> inline, `<code>`, <http://evil.example>
"""


def test_hostile_card_content_is_refused_from_the_metadata_and_inert_in_the_text(cli, repo_dir, tmp_path):
    from markdown_it import MarkdownIt

    from tests.test_card_injection import _walk

    cli.ok("commit", hub_snapshot(tmp_path, 9, card=HOSTILE_CARD), "-m", "hostile", cwd=repo_dir)
    out = tmp_path / "out"
    r = cli("export", "HEAD", out, "--card", cwd=repo_dir)
    assert r.returncode == 0 and "base_model" in r.stderr
    text = (out / "README.md").read_text(encoding="utf-8")
    card = ModelCard(text)
    # A base_model with a newline is no Hub id: neither the card nor the config names it.
    assert card.data.base_model is None
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    # Other values are exact YAML data, whatever they hold.
    assert card.data.license == "mit\n<script>alert(2)</script>"
    assert card.data.tags[0] == "<img src=x onerror=alert(3)>"
    front = text.split("\n---\n", 1)[0]
    assert "alert(1)" not in front and "\n---" not in front[3:]  # one-line scalars: no document marker
    tokens = MarkdownIt("commonmark").enable("table").parse(card.text)
    types = [t.type for t in _walk(tokens)]
    assert "html_block" not in types and "html_inline" not in types and "link_open" not in types
    rendered = MarkdownIt("commonmark").enable("table").render(card.text)
    assert "<script" not in rendered and "<div" not in rendered and "&lt;script&gt;alert(4)" in rendered
    # --base-model-id with a newline is refused in one line, as a path is.
    r = cli("export", "HEAD", tmp_path / "out2", "--card", "--base-model-id", "org/x\n---", cwd=repo_dir)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_a_card_given_with_a_peft_model_replaces_the_one_peft_writes(repo_dir, tmp_path):
    from peft import PeftModel

    from tests.adapters import tiny_llama

    model = PeftModel.from_pretrained(tiny_llama(), str(hub_snapshot(tmp_path, 11)))
    card = tmp_path / "card.md"
    card.write_text(CARD, encoding="utf-8")
    repo = Repository.open(repo_dir)
    info = repo.commit(model, "from python", attachments={"README.md": card})
    assert [a["name"] for a in info.commit.attachments] == ["README.md"]
    assert repo.read_attachment("HEAD", "README.md") == CARD.encode()
    assert info.commit.provenance["card"]["license"] == "apache-2.0"
