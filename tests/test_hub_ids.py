"""export --card names base_model by a Hub id: a local path PEFT recorded is never written."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub import ModelCard

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from mfgit.api.repository import Repository  # noqa: E402
from mfgit.audit.export import hub_model_id  # noqa: E402


@pytest.fixture
def path_based_commit(cli, tmp_path, mfgit_env):
    """A commit of an adapter whose base model was loaded from disk (PEFT records the path)."""
    cli.ok("init", tmp_path / "repo")
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    model = peft.get_peft_model(transformers.BertModel(cfg), peft.LoraConfig(r=2, target_modules=["query"]))
    model.peft_config["default"].base_model_name_or_path = str(tmp_path / "models" / "bert-tiny")
    Repository.open(tmp_path / "repo").commit(model, "from disk")
    return tmp_path / "repo"


def test_a_local_base_model_path_is_left_out_of_the_card_with_a_warning(cli, path_based_commit, tmp_path):
    r = cli("export", "HEAD", tmp_path / "out", "--card", cwd=path_based_commit)
    assert r.returncode == 0, r.stderr
    assert "no base_model" in r.stderr and "--base-model-id" in r.stderr
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model is None and card.data.base_model_relation == "adapter"
    assert str(tmp_path) not in (tmp_path / "out" / "README.md").read_text().split("---")[1]


def test_base_model_id_names_the_base_model_in_the_card(cli, path_based_commit, tmp_path):
    r = cli("export", "HEAD", tmp_path / "out", "--card", "--base-model-id", "google-bert/bert-base-uncased",
            cwd=path_based_commit)
    assert r.returncode == 0 and r.stderr == ""
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model == "google-bert/bert-base-uncased" and card.data.library_name == "peft"


def test_a_path_given_as_base_model_id_is_refused_in_one_line(cli, path_based_commit, tmp_path):
    r = cli("export", "HEAD", tmp_path / "out", "--card", "--base-model-id", "/models/x", cwd=path_based_commit)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "not a Hub model id" in r.stderr


@pytest.mark.parametrize("name, ok", [("gpt2", True), ("meta-llama/Llama-3.2-1B", True), ("/data/m", False),
                                      ("./m", False), ("a/b/c", False), ("a--b", False), ("-a", False),
                                      ("https://huggingface.co/gpt2", False), ("", False)])
def test_hub_model_id_agrees_with_huggingface_hub(name, ok):
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
        hub_ok = True
    except HFValidationError:
        hub_ok = False
    assert (hub_model_id(name) is not None) == ok == hub_ok
