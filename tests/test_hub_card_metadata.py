"""A Hub snapshot's model card: its front matter is kept with the commit and written back by export --card."""

from __future__ import annotations

import json
import shutil

import pytest
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
