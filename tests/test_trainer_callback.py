"""MfgitCallback inside a real transformers Trainer, and repo.commit(peft_model)."""

from __future__ import annotations

import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from mfgit.api.repository import Repository  # noqa: E402
from mfgit.integrations.transformers import MfgitCallback  # noqa: E402


@pytest.fixture(autouse=True)
def _identity(mfgit_env):
    """Commits need an author; the isolated environment of the other tests gives one."""


def _tiny_bert():
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32, num_labels=2)
    torch.manual_seed(0)
    base = transformers.BertForSequenceClassification(cfg)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS")
    return cfg, peft.get_peft_model(base, lora)


class _Data(torch.utils.data.Dataset):
    def __init__(self, n=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 64, (n, 8), generator=g)
        self.labels = (self.ids[:, 0] % 2).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.labels[i]}


def _train(tmp_path, callback, *, max_steps=6, **kw):
    _, model = _tiny_bert()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=4,
        eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2, logging_steps=1,
        learning_rate=5e-2, report_to=[], use_cpu=True, disable_tqdm=True, hub_token="hf_SECRET", **kw)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Data(), eval_dataset=_Data(8, seed=1),
                                   callbacks=[callback])
    trainer.train()
    return trainer


def test_each_save_is_a_commit_with_metrics_args_best_tag_and_push(tmp_path):
    remote = tmp_path / "remote"
    Repository.init(remote, bare=True)
    Repository.init(tmp_path / "repo").remote_add("hub", str(remote))
    cb = MfgitCallback(repo=tmp_path / "repo", branch="sites/a", every="save", push="hub",
                       best_metric="eval_loss", greater_is_better=False)
    _train(tmp_path, cb)
    repo = Repository.open(tmp_path / "repo")
    assert len(cb.commits) == 3
    metas = [repo.read_commit(c).provenance["meta"] for c in cb.commits]
    assert [m["step"] for m in metas] == [2, 4, 6]
    for m in metas:
        assert isinstance(m["eval_loss"], float) and "loss" in m and m["epoch"] > 0
        assert m["training_args"]["learning_rate"] == 5e-2
        assert "hub_token" not in m["training_args"] and "hf_SECRET" not in str(m)
    assert repo.resolve("sites/a") == cb.commits[-1]
    best = min(range(3), key=lambda i: metas[i]["eval_loss"])
    assert repo.resolve(cb.best_tag) == cb.commits[best]
    pushed = Repository.open(remote)
    assert pushed.resolve("sites/a") == cb.commits[-1]
    assert pushed.resolve(cb.best_tag) == cb.commits[best]


def test_each_commit_checks_out_to_an_adapter_peft_loads(tmp_path):
    cb = MfgitCallback(repo=tmp_path / "repo", branch="sites/a", every="epoch")
    _train(tmp_path, cb, max_steps=-1, num_train_epochs=2)
    repo = Repository.open(tmp_path / "repo")
    assert len(cb.commits) == 2
    cfg, _ = _tiny_bert()
    for i, c in enumerate(cb.commits):
        d = repo.checkout(c, tmp_path / f"co{i}")
        torch.manual_seed(0)
        base = transformers.BertForSequenceClassification(cfg)
        loaded = peft.PeftModel.from_pretrained(base, str(d))
        assert any("lora_A" in n for n, _ in loaded.named_parameters())


def test_a_missing_remote_or_unwritable_repository_does_not_stop_training(tmp_path, caplog):
    Repository.init(tmp_path / "repo")
    cb = MfgitCallback(repo=tmp_path / "repo", branch="sites/a", push="nowhere", best_metric="eval_loss")
    with caplog.at_level(logging.WARNING, logger="mfgit.integrations.transformers"):
        trainer_ok = _train(tmp_path, cb, max_steps=2)
    assert trainer_ok.state.global_step == 2
    assert any("push" in r.getMessage() for r in caplog.records)
    caplog.clear()
    # A repository that cannot be opened or made: its path is a file.
    (tmp_path / "notarepo").write_text("x")
    cb2 = MfgitCallback(repo=tmp_path / "notarepo", branch="sites/b")
    with caplog.at_level(logging.WARNING, logger="mfgit.integrations.transformers"):
        trainer = _train(tmp_path, cb2, max_steps=4)
    assert trainer.state.global_step == 4 and cb2.commits == []
    assert sum("commit" in r.getMessage() for r in caplog.records) == 2


def test_commit_takes_a_peft_model_object(tmp_path):
    repo = Repository.init(tmp_path / "repo")
    _, model = _tiny_bert()
    info = repo.commit(model, "from a loop", meta={"step": 1})
    d = repo.checkout(info.id, tmp_path / "co")
    cfg, _ = _tiny_bert()
    loaded = peft.PeftModel.from_pretrained(transformers.BertForSequenceClassification(cfg), str(d))
    want = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    got = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert repo.read_commit(info.id).provenance["meta"] == {"step": 1}


def test_only_the_main_process_commits(tmp_path):
    """Under distributed training the other ranks leave the repository alone."""
    _, model = _tiny_bert()
    cb = MfgitCallback(repo=tmp_path / "repo", branch="sites/a")
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    state = transformers.TrainerState(is_world_process_zero=False, global_step=2, epoch=1.0)
    cb.on_save(args, state, transformers.TrainerControl(), model=model)
    assert cb.commits == [] and not (tmp_path / "repo").exists()
    state.is_world_process_zero = True
    cb.on_save(args, state, transformers.TrainerControl(), model=model)
    assert len(cb.commits) == 1
