"""Crafted objects with correct ids: every reading command gives one clean line, fsck names them.

A participant can store any bytes under their true id and point a branch
at them (here: `repo.store.put` of canonical JSON that the schema refuses,
then a ref). `show`, `diff`, `blame`, `checkout` and `verify` must each
exit with the table's code for damage (5) and one line — never a traceback
— and `fsck` must report the object as malformed. Crafted objects the
schema allows (a saved tensor that belongs to no module, two adapters with
differently shaped modules) must be read without a crash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from mfgit.api.repository import Repository
from mfgit.objects import Commit
from mfgit.objects.canonical import canonical_json
from tests.conftest import AUTHOR_EMAIL, AUTHOR_NAME

DAMAGED = 5
Q_PROJ = "base_model.model.model.layers.0.self_attn.q_proj"
QA = f"{Q_PROJ}.lora_A.weight"


def _crafted_commit(repo: Repository, adapter: str, **fields: Any) -> dict[str, Any]:
    value = {"adapter": adapter, "parents": [repo.head()], "author": {"name": AUTHOR_NAME, "email": AUTHOR_EMAIL},
             "site": None, "timestamp": "2030-01-01T00:00:00.000000Z", "message": "crafted",
             "provenance": {"kind": "import"}}
    value.update(fields)
    return value


def _adapter_mutation(change: Callable[[dict], None]) -> Callable[[Repository], str]:
    """A crafted commit whose adapter manifest is the good one with `change` applied; returns the bad object's id."""
    def craft(repo: Repository) -> tuple[str, str]:
        good = repo.read_adapter(repo.read_commit(repo.head()).adapter).to_dict()
        bad = json.loads(json.dumps(good))
        change(bad)
        aid = repo.store.put("adapter", canonical_json(bad))
        commit = Commit.from_dict(_crafted_commit(repo, aid))
        return repo.put_commit(commit), aid
    return craft


def _commit_mutation(**fields: Any) -> Callable[[Repository], tuple[str, str]]:
    def craft(repo: Repository) -> tuple[str, str]:
        head = repo.read_commit(repo.head())
        cid = repo.store.put("commit", canonical_json(_crafted_commit(repo, head.adapter, **fields)))
        return cid, cid
    return craft


def _bad_tensor_header(repo: Repository) -> tuple[str, str]:
    head = repo.read_commit(repo.head())
    good = repo.read_adapter(head.adapter).to_dict()
    t = good["tensors"][QA]
    tid = repo.store.put("tensor", canonical_json({"dtype": t["dtype"], "shape": "8x64"}) + b"\n" + bytes(4 * 8 * 64))
    good["tensors"][QA] = {**t, "id": tid}
    aid = repo.store.put("adapter", canonical_json(good))
    return repo.put_commit(Commit.from_dict(_crafted_commit(repo, aid))), tid


def _tensor_of_another_shape(repo: Repository) -> tuple[str, str]:
    head = repo.read_commit(repo.head())
    good = repo.read_adapter(head.adapter).to_dict()
    t = good["tensors"][QA]
    tid = repo.store.put("tensor", canonical_json({"dtype": t["dtype"], "shape": [8, 32]}) + b"\n" + bytes(4 * 8 * 32))
    good["tensors"][QA] = {**t, "id": tid}
    aid = repo.store.put("adapter", canonical_json(good))
    return repo.put_commit(Commit.from_dict(_crafted_commit(repo, aid))), tid


def _set_tensor(field: str, value: Any) -> Callable[[dict], None]:
    return lambda a: a["tensors"][QA].__setitem__(field, value)


CRAFTED = {
    "tensor_shape_a_string": _adapter_mutation(_set_tensor("shape", "8x64")),
    "unknown_dtype": _adapter_mutation(_set_tensor("dtype", "F128")),
    "missing_tensor_id": _adapter_mutation(lambda a: a["tensors"][QA].pop("id")),
    "tensors_a_list": _adapter_mutation(lambda a: a.update(tensors=list(a["tensors"]))),
    "module_naming_a_missing_tensor": _adapter_mutation(lambda a: a["tensors"].pop(QA)),
    "module_rank_disagrees": _adapter_mutation(lambda a: a["modules"][Q_PROJ].update(r=4)),
    "config_r_disagrees": _adapter_mutation(lambda a: a["config"].update(r=4)),
    "invalid_rank_pattern_key": _adapter_mutation(lambda a: a["config"].update(rank_pattern={"(": 8})),
    "rank_pattern_value_a_word": _adapter_mutation(lambda a: a["config"].update(rank_pattern={"q_proj": "eight"})),
    "reserved_file_name": _adapter_mutation(
        lambda a: a["files"].update({"adapter_model.safetensors": next(iter(a["tensors"].values()))["id"]})),
    "author_a_string": _commit_mutation(author="Mallory <m@example.org>"),
    "timestamp_an_int": _commit_mutation(timestamp=1893456000),
    "message_a_list": _commit_mutation(message=["crafted"]),
    "extra_signature_field": _commit_mutation(signature={"format": "ed25519", "public_key": "AAAA", "key_id": "SHA256:x",
                                                         "sig": "AAAA", "note": "uncovered"}),
    "tensor_header_shape_a_string": _bad_tensor_header,
    "tensor_of_another_shape_than_the_manifest": _tensor_of_another_shape,
}


@pytest.fixture
def committed(cli, repo_dir, adapter_dir) -> Path:
    cli.ok("commit", adapter_dir("a", seed=1), "-m", "one", cwd=repo_dir)
    return repo_dir


def _no_traceback(res) -> None:
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    assert res.returncode not in (0, 70), (res.returncode, res.stderr, res.stdout)


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_object_gives_one_line_in_every_reader_and_fsck_reports_it(cli, committed, tmp_path, case):
    repo = Repository.open(committed)
    cid, bad = CRAFTED[case](repo)
    repo.refs.update("refs/heads/evil", cid, None)
    readers = [["show", "evil"], ["diff", "main", "evil"], ["blame", "evil"], ["checkout", "evil", "--to", tmp_path / "out"]]
    if case.startswith("tensor_"):  # show and blame read manifests only, never tensor data
        readers = readers[1:2] + readers[3:]
    for args in readers:
        line = cli.fails(*args, cwd=committed, code=DAMAGED)
        assert bad in line and "malformed" in line, (args, line)
    assert not (tmp_path / "out").exists()
    res = cli("verify", "evil", "--json", cwd=committed)
    _no_traceback(res)
    report = json.loads(res.stdout)
    assert not report["ok"]
    assert any(bad == p.get("object") for p in report["integrity"]["problems"]), report["integrity"]
    if case.startswith("tensor_"):
        return  # fsck reads tensors' frames, not their headers; verify (above) decodes them
    res = cli("fsck", "--json", cwd=committed)
    _no_traceback(res)
    fsck = json.loads(res.stdout)
    assert [c for c in fsck["corrupt"] if c["id"] == bad and "malformed" in c["error"]], fsck["corrupt"]
    res = cli("fsck", cwd=committed)
    _no_traceback(res)
    assert bad in res.stdout + res.stderr


def test_crafted_malformed_ancestor_gives_one_line_in_blame_of_a_descendant(cli, committed, adapter_dir):
    repo = Repository.open(committed)
    cid, bad = CRAFTED["invalid_rank_pattern_key"](repo)
    repo.refs.update("refs/heads/main", cid, repo.head())
    cli.ok("commit", adapter_dir("b", seed=2), "-m", "child", cwd=committed)
    line = cli.fails("blame", cwd=committed, code=DAMAGED)
    assert bad in line and "rank_pattern" in line


def test_saved_tensor_of_no_module_is_read_by_every_command(cli, repo_dir, adapter_dir, tmp_path):
    cli.ok("commit", adapter_dir("a", seed=1), "-m", "one", cwd=repo_dir)
    two = adapter_dir("b", seed=1)
    weights = two / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    tensors["base_model.model.lm_head.extra_scale"] = torch.ones(4)
    save_file(tensors, str(weights), metadata={"format": "pt"})
    cli.ok("commit", two, "-m", "with an extra tensor", cwd=repo_dir)
    d = cli.json("diff", "HEAD~1", "HEAD", "--json", cwd=repo_dir)
    assert d["summary"]["changed"] == 0 and not d["identical"]
    assert d["tensors"] == [{"name": "base_model.model.lm_head.extra_scale", "status": "added", "id_a": None,
                             "id_b": d["tensors"][0]["id_b"]}]
    for args in (["show", "HEAD"], ["blame"], ["verify", "HEAD"], ["fsck"], ["checkout", "HEAD", "--to", tmp_path / "o"]):
        cli.ok(*args, cwd=repo_dir)
    assert load_file(str(tmp_path / "o" / "adapter_model.safetensors")).keys() == tensors.keys()


def test_diff_of_same_named_modules_of_different_shapes_reports_them_changed(cli, repo_dir, adapter_dir):
    # The bug: numpy raised ValueError concatenating factors of different sizes.
    cli.ok("commit", adapter_dir("wide", seed=1, hidden=64), "-m", "wide", cwd=repo_dir)
    cli.ok("commit", adapter_dir("narrow", seed=1, hidden=32), "-m", "narrow", cwd=repo_dir)
    d = cli.json("diff", "HEAD~1", "HEAD", "--json", cwd=repo_dir)
    assert d["summary"]["changed"] == d["summary"]["modules"] > 0
    for m in d["modules"]:
        assert m["status"] == "changed" and m["shapes"]["a"] != m["shapes"]["b"], m
        assert m["norm_a"] > 0 and m["norm_b"] > 0 and m["norm_diff"] is None and m["cosine"] is None
    assert d["summary"]["norm_diff"] is not None
    assert "M  " in cli.ok("diff", "HEAD~1", "HEAD", cwd=repo_dir).stdout
    cli.ok("diff", "HEAD~1", "HEAD", "--stat", cwd=repo_dir)
    cli.ok("blame", cwd=repo_dir)
