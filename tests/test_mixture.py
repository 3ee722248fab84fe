"""MedForge-Mixture: an output-space composite, Σⱼ wⱼ·softmax(logits with member j), committed as a mixture.

The module `load_mixture` gives is compared with the same sum computed here
from each member loaded on its own with PeftModel, on a tiny BERT classifier
built from a config and on the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mfgit.errors import MalformedObject
from mfgit.objects import Commit
from mfgit.objects.model import decode_object
from tests.adapters import make_classifier_adapter, tiny_bert_classifier

_A, _B = "a" * 64, "b" * 64


def _fixed_mixture(parents=(_A, _B), members=((_A, 0.75), (_B, 0.25))) -> Commit:
    return Commit(adapter="c" * 64, parents=tuple(parents), author={"name": "Ada", "email": "ada@example.org"},
                  site=None, timestamp="2026-01-02T03:04:05.000006Z", message="mixture\n",
                  provenance={"kind": "mixture"},
                  mixture={"combine": "softmax", "members": [{"commit": c, "weight": w} for c, w in members]})


# --- encoding -------------------------------------------------------------------------------------


def test_a_mixture_commit_decodes_to_itself():
    # Its pinned id: tests/test_format_pinned.py.
    c = _fixed_mixture()
    assert b'"mixture":{"combine":"softmax","members":[{"commit":"' + _A.encode() in c.encode()
    again = decode_object(c.id, "commit", c.encode())
    assert again == c and again.mixture_members() == [(_A, 0.75), (_B, 0.25)]


def test_a_commit_without_mixture_encodes_without_the_field():
    c = _fixed_mixture()
    plain = Commit(**{**c.__dict__, "mixture": None})
    assert b'"mixture":' not in plain.encode()
    assert not plain.is_mixture and plain.mixture_members() == []


@pytest.mark.parametrize("mixture, parents, reason", [
    ({"combine": "mean", "members": [{"commit": _A, "weight": 1.0}]}, [_A], "mixture.combine"),
    ({"combine": "softmax", "members": []}, [], "mixture.members"),
    ({"combine": "softmax", "members": [{"commit": _A, "weight": 1}]}, [_A], "floating-point"),
    ({"combine": "softmax", "members": [{"commit": _A, "weight": 1.0, "x": 1}]}, [_A], "unknown field"),
    ({"combine": "softmax", "members": [{"commit": _A, "weight": 1.0}, {"commit": _A, "weight": 1.0}]},
     [_A], "twice"),
    ({"combine": "softmax", "members": [{"commit": _A, "weight": 1.0}]}, [_B], "parents"),
    ({"combine": "softmax", "members": [{"commit": _A, "weight": 1.0}]}, [_A, _B], "parents"),
    ({"combine": "softmax", "members": [{"commit": _A, "weight": 1.0}]}, ["d" * 64, "e" * 64, _A], "parents"),
    ({"combine": "softmax"}, [_A], "lacks"),
])
def test_a_malformed_mixture_is_refused_at_decode(mixture, parents, reason):
    from mfgit.objects.canonical import canonical_json

    value = _fixed_mixture().to_dict()
    value.update(mixture=mixture, parents=parents)
    data = canonical_json(value)
    with pytest.raises(MalformedObject, match=reason):
        decode_object("f" * 64, "commit", data)


def test_the_previous_tip_may_come_before_the_members():
    c = _fixed_mixture(parents=("d" * 64, _A, _B))
    assert decode_object(c.id, "commit", c.encode()) == c


# --- the module's output --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert-adapters")
    return [make_classifier_adapter(root / f"site{i}", seed=10 + i, r=4 + 2 * i, std=0.3) for i in range(3)]


def _site_repo(path: Path, adapters: list[Path], sites=("a", "b", "c")):
    from mfgit.api.repository import Repository

    repo = Repository.init(path)
    ids = []
    for site, src in zip(sites, adapters):
        repo.config.set("user.site", site)
        repo.switch(f"sites/{site}", orphan=True)
        ids.append(repo.commit(src, f"LoRA of site {site}").id)
    repo.config.set("user.site", "coordinator")
    return repo, ids


def _reference(adapter_dirs: list[Path], weights: list[float], inputs: dict, base=tiny_bert_classifier,
               logits=lambda m, **kw: m(**kw).logits) -> torch.Tensor:
    from peft import PeftModel

    total = 0
    for d, w in zip(adapter_dirs, weights):
        model = PeftModel.from_pretrained(base(), str(d)).eval()
        with torch.no_grad():
            total = total + w * torch.softmax(logits(model, **inputs).float(), dim=-1)
    return total


def _bert_inputs():
    gen = torch.Generator().manual_seed(3)
    return {"input_ids": torch.randint(0, 64, (5, 12), generator=gen),
            "attention_mask": torch.ones(5, 12, dtype=torch.long)}


def test_mixture_output_is_the_weighted_sum_of_member_softmaxes_on_a_tiny_bert(tmp_path, mfgit_env, bert_adapters):
    repo, ids = _site_repo(tmp_path / "repo", bert_adapters)
    weights = [0.5, 0.3, 0.2]
    report = repo.mix(["sites/a", "sites/b", "sites/c"], weights=weights, branch="composite/mixture")
    c = repo.read_commit(report.commit)
    assert c.is_mixture and c.mixture_members() == list(zip(ids, weights))
    assert list(c.parents) == ids and repo.resolve("composite/mixture") == report.commit
    assert repo.read_adapter(c.adapter).tensors == {}
    inputs = _bert_inputs()
    module = repo.load_mixture(tiny_bert_classifier(), "composite/mixture")
    with torch.no_grad():
        got = module(**inputs)
    want = _reference(bert_adapters, weights, inputs)
    assert got.shape == (5, 3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # The members really differ: each member's softmax alone is not the mixture.
    assert not torch.allclose(_reference(bert_adapters[:1], [1.0], inputs), want, atol=1e-3)
