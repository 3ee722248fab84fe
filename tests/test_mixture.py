"""MedForge-Mixture: an output-space composite, Σⱼ wⱼ·softmax(logits with member j), committed as a mixture.

The module `load_mixture` gives is compared with the same sum computed here
from each member loaded on its own with PeftModel, on a tiny BERT classifier
built from a config and on the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mfgit.errors import IsAMixture, MalformedObject, MixtureBaseMismatch, MixtureError
from mfgit.objects import Commit
from mfgit.objects.model import decode_object
from tests.adapters import make_classifier_adapter, make_lora_adapter, tiny_bert_classifier

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


def test_mixture_output_on_all_minilm_l6_v2_with_a_prompt_classifier(tmp_path, mfgit_env):
    """The real encoder, CLIP-style logits (cosine to class prompts × temperature), as the demo classifies."""
    from mfgit.demo.model import TEMPERATURE, class_embeddings, embed, load_base, tokenize
    from tests.adapters import make_minilm_adapter

    dirs = [make_minilm_adapter(tmp_path / f"m{i}", seed=40 + i, std=0.2) for i in range(2)]
    prompts = [["a benign tumour"], ["a malignant tumour"], ["no tumour at all"]]

    def logits(model, texts):
        return TEMPERATURE * embed(model, **tokenize(texts)) @ class_embeddings(model, prompts).T

    repo, _ = _site_repo(tmp_path / "repo", dirs, sites=("a", "b"))
    repo.mix(["sites/a", "sites/b"], weights=[0.7, 0.3], branch="mixture")
    texts = ["cell size large, margins irregular", "smooth margins, small size"]
    module = repo.load_mixture(load_base(), "mixture", logits=logits)
    with torch.no_grad():
        got = module(texts)
    want = _reference(dirs, [0.7, 0.3], {"texts": texts}, base=load_base, logits=lambda m, **kw: logits(m, **kw))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(_reference(dirs[:1], [1.0], {"texts": texts}, base=load_base,
                                         logits=lambda m, **kw: logits(m, **kw)), want, atol=1e-4)
    # An encoder has no logits: without a logits function the module says so instead of guessing.
    with pytest.raises(MixtureError, match="has no logits"):
        repo.load_mixture(load_base(), "mixture")(**tokenize(texts))


# --- errors -----------------------------------------------------------------------------------------


def test_members_of_different_base_models_are_refused(tmp_path, mfgit_env, bert_adapters):
    other = make_lora_adapter(tmp_path / "llama", seed=1)
    repo, _ = _site_repo(tmp_path / "repo", [bert_adapters[0], other], sites=("a", "b"))
    with pytest.raises(MixtureBaseMismatch, match="tiny-bert-classifier.*tiny-llama-test"):
        repo.mix(["sites/a", "sites/b"], branch="m")


def test_mix_refuses_bad_weights_and_search_options_without_search(tmp_path, mfgit_env, bert_adapters):
    repo, _ = _site_repo(tmp_path / "repo", bert_adapters[:2], sites=("a", "b"))
    with pytest.raises(MixtureError, match="2 revision"):
        repo.mix(["sites/a", "sites/b"], weights=[1.0], branch="m")
    with pytest.raises(MixtureError, match="go with --search"):
        repo.mix(["sites/a", "sites/b"], budget=3, branch="m")
    with pytest.raises(MixtureError, match="named twice"):
        repo.mix(["sites/a", "sites/a"], branch="m")


def test_verbs_that_need_one_adapter_refuse_a_mixture(tmp_path, mfgit_env, bert_adapters):
    repo, _ = _site_repo(tmp_path / "repo", bert_adapters[:2], sites=("a", "b"))
    repo.mix(["sites/a", "sites/b"], branch="m")
    with pytest.raises(IsAMixture, match="no one adapter"):
        repo.load_adapter(tiny_bert_classifier(), "m")
    with pytest.raises(IsAMixture, match="weight space"):
        repo.merge(["m", "sites/a"])
    with pytest.raises(IsAMixture, match="diff"):
        repo.diff("m", "sites/a")
    with pytest.raises(IsAMixture):
        repo.export("m", tmp_path / "export")
    with pytest.raises(IsAMixture):
        repo.blame("m")
    with pytest.raises(MixtureError, match="not a mixture"):
        repo.load_mixture(tiny_bert_classifier(), "sites/a")


# --- a late site ------------------------------------------------------------------------------------


def test_a_late_site_joins_by_flattening_and_rescaling_the_members(tmp_path, mfgit_env, bert_adapters):
    repo, ids = _site_repo(tmp_path / "repo", bert_adapters)
    first = repo.mix(["sites/a", "sites/b"], weights=[0.5, 0.5], branch="composite/mixture")
    second = repo.mix(["composite/mixture", "sites/c"], weights=[0.8, 0.4], branch="composite/mixture")
    c = repo.read_commit(second.commit)
    assert c.mixture_members() == [(ids[0], 0.4), (ids[1], 0.4), (ids[2], 0.4)]
    # The previous mixture stays in the branch's history, as its first parent.
    assert list(c.parents) == [first.commit, *ids]
    assert repo.is_ancestor(first.commit, second.commit)
    assert [i["rev"] for i in c.provenance["inputs"]] == ["composite/mixture", "sites/c"]
    # Without weights each revision weighs its share of the members: uniform stays uniform.
    third = repo.mix(["composite/mixture~1", "sites/c"], branch="uniform")
    assert [w for _, w in repo.read_commit(third.commit).mixture_members()] == pytest.approx([1 / 3] * 3)
    inputs = _bert_inputs()
    with torch.no_grad():
        got = repo.load_mixture(tiny_bert_classifier(), "composite/mixture")(**inputs)
    torch.testing.assert_close(got, _reference(bert_adapters, [0.4, 0.4, 0.4], inputs), rtol=1e-5, atol=1e-6)
    # verify: the members are present, weights recorded, one base model.
    v = repo.verify("composite/mixture")
    assert v["ok"] and [m["ok"] for m in v["mixtures"]] == [True, True]
    # The static pages show each mixture's members (it has no modules to compare).
    repo.pages(tmp_path / "pages")
    pages = [p.read_text(encoding="utf-8") for p in (tmp_path / "pages").rglob("*.html")]
    assert sum('<section id="mixture">' in p for p in pages) == 3  # composite/mixture, its parent, uniform


# --- searched weights ---------------------------------------------------------------------------------


def _target_score(bert_adapters, favourite: int):
    """A constructed case: the labels are what member `favourite` predicts; the score is the NLL of the
    normalised mixture at those labels, so weight on that member lowers it."""
    inputs = _bert_inputs()
    labels = _reference([bert_adapters[favourite]], [1.0], inputs).argmax(-1)

    def score(model):
        with torch.no_grad():
            p = model(**inputs).clamp_min(1e-9)
        p = p / p.sum(-1, keepdim=True)
        return float(-torch.log(p[torch.arange(len(labels)), labels]).mean())

    return score


def test_stagewise_search_improves_the_score_over_uniform_and_is_recorded(tmp_path, mfgit_env, bert_adapters):
    repo, ids = _site_repo(tmp_path / "repo", bert_adapters)
    score = _target_score(bert_adapters, 2)
    report = repo.mix(["sites/a", "sites/b", "sites/c"], search="weights", stagewise=True, score=score,
                      base=tiny_bert_classifier, budget=10, seed=1, branch="searched")
    s = report.provenance["search"]
    assert s["stagewise"] and len(s["stages"]) == 2 and s["l1"] == 0.05 and s["bounds"] == [-1.5, 1.5]
    assert s["stages"][0]["evaluations"][0]["weights"] == [0.5, 0.5]  # MedForge's start
    assert s["chosen"]["score"] < s["start"]["score"]
    # w <- [a*w, b] at each stage: the recorded weights are the product of the stages' [a, b].
    (a1, b1), (a2, b2) = [(st["chosen"]["a"], st["chosen"]["b"]) for st in s["stages"]]
    assert [w for _, w in repo.read_commit(report.commit).mixture_members()] == pytest.approx([a1 * a2, b1 * a2, b2])
    # The committed mixture scores what the search recorded.
    module = repo.load_mixture(tiny_bert_classifier(), "searched")
    assert score(module) == pytest.approx(s["chosen"]["score"], rel=1e-6)
    uniform = repo.load_mixture(tiny_bert_classifier(), repo.mix(["sites/a", "sites/b", "sites/c"], branch="u").commit)
    assert score(module) < score(uniform)


def test_a_joint_search_weighs_every_revision_at_once_with_the_mean_penalty(tmp_path, mfgit_env, bert_adapters):
    repo, ids = _site_repo(tmp_path / "repo", bert_adapters)
    score = _target_score(bert_adapters, 0)
    report = repo.mix(["sites/a", "sites/b", "sites/c"], search="weights", score=score, base=tiny_bert_classifier,
                      budget=8, l1=0.5, branch="joint")
    s = report.provenance["search"]
    (stage,) = s["stages"]
    assert not s["stagewise"] and stage["start"] == pytest.approx([1 / 3] * 3)
    for e in stage["evaluations"]:
        if e["score"] is not None:
            assert e["objective"] == pytest.approx(e["score"] + 0.5 * sum(abs(w) for w in e["weights"]) / 3)
    assert [w for _, w in repo.read_commit(report.commit).mixture_members()] == s["chosen"]["weights"]
    assert stage["chosen"]["objective"] <= stage["evaluations"][0]["objective"]


def test_a_late_site_joins_a_mixture_with_one_searched_stage(tmp_path, mfgit_env, bert_adapters):
    repo, ids = _site_repo(tmp_path / "repo", bert_adapters)
    repo.mix(["sites/a", "sites/b"], weights=[0.5, 0.5], branch="mx")
    report = repo.mix(["mx", "sites/c"], search="weights", stagewise=True, score=_target_score(bert_adapters, 2),
                      base=tiny_bert_classifier, budget=8, branch="mx")
    (stage,) = report.provenance["search"]["stages"]
    a, b = stage["chosen"]["a"], stage["chosen"]["b"]
    assert [w for _, w in repo.read_commit(report.commit).mixture_members()] == pytest.approx([0.5 * a, 0.5 * a, b])


def test_search_over_revisions_that_share_a_member_loads_each_member_once(tmp_path, mfgit_env, bert_adapters):
    """Regression: mixing a mixture with one of its own members failed with "2 weight(s) for 3 member(s)"
    under --search (every revision's members were loaded, duplicates included), though it worked without."""
    repo, ids = _site_repo(tmp_path / "repo", bert_adapters)
    repo.mix(["sites/a", "sites/b"], weights=[0.5, 0.5], branch="mx")
    report = repo.mix(["mx", "sites/a"], search="weights", score=_target_score(bert_adapters, 0),
                      base=tiny_bert_classifier, budget=6, branch="mx2")
    members = repo.read_commit(report.commit).mixture_members()
    assert [c for c, _ in members] == [ids[0], ids[1]]
    wa, wb = report.provenance["search"]["chosen"]["weights"]
    assert [w for _, w in members] == pytest.approx([0.5 * wa + wb, 0.5 * wa])


# --- the command line -----------------------------------------------------------------------------------


def test_cli_mix_show_checkout_log_lineage_diff_verify(cli, tmp_path, bert_adapters):
    repo = tmp_path / "repo"
    cli.ok("init", repo)
    cli = cli.at(repo)
    ids = []
    for s, src in zip("abc", bert_adapters):
        cli.ok("switch", "--orphan", f"sites/{s}")
        cli.ok("config", "site", f"hospital-{s}")
        cli.ok("commit", src, "-m", f"site {s}")
        ids.append(cli.ok("log", "--oneline").stdout.split()[0])
    cli.ok("config", "site", "coordinator")
    cli.ok("switch", "--orphan", "composite/mixture")
    out = cli.ok("mix", "sites/a", "sites/b", "--weights", "0.6,0.4", "-m", "mixture of a and b").stdout
    assert "mixture of 2 member(s)" in out and "hospital-a" in out
    data = cli.json("show", "--json", "composite/mixture")
    members = data["commit"]["mixture"]["members"]
    assert [m["weight"] for m in members] == [0.6, 0.4] and data["commit"]["parents"][0].startswith(ids[0])
    assert data["mixture"]["members"][1]["site"] == "hospital-b" and data["adapter"]["modules"] == 0
    text = cli.ok("show", "composite/mixture").stdout
    assert "Mixture (softmax" in text and "weight 0.6" in text and "empty: a mixture merges no weights" in text

    out_dir = tmp_path / "out"
    cli.ok("checkout", "composite/mixture", "--to", out_dir)
    doc = json.loads((out_dir / "mixture.json").read_text())
    assert doc["combine"] == "softmax" and [m["weight"] for m in doc["members"]] == [0.6, 0.4]
    for i, m in enumerate(doc["members"]):
        d = out_dir / m["path"]
        assert d.name == f"{i}-{m['commit'][:10]}"
        single = tmp_path / f"single-{i}"
        cli.ok("checkout", m["commit"], "--to", single)
        for f in ("adapter_model.safetensors", "adapter_config.json"):
            assert (d / f).read_bytes() == (single / f).read_bytes()

    # A late site: mix the mixture with site c; log --graph shows both mixtures.
    cli.ok("mix", "composite/mixture", "sites/c", "--weights", "1.0,0.5")
    graph = cli.ok("log", "--graph").stdout
    assert graph.count("[mixture of") == 2 and "[mixture of 3]" in graph
    lineage = cli.json("lineage", "--json")
    assert {lf["site"]: lf["effective_weight"] for lf in lineage["leaves"]} == \
        {"hospital-a": 0.6, "hospital-b": 0.4, "hospital-c": 0.5}
    assert all(lf["space"] == "output" for lf in lineage["leaves"])
    assert "mixture softmax (output space)" in cli.ok("lineage").stdout
    assert "mixture softmax (output space)" in cli.ok("lineage", "--dot").stdout
    cli.ok("lineage", "--html", tmp_path / "lineage.html")
    assert "mixture · softmax · outputs" in (tmp_path / "lineage.html").read_text(encoding="utf-8")
    d = cli.json("diff", "composite/mixture~1", "composite/mixture", "--json")
    assert d["kind"] == "mixture" and d["counts"] == {"added": 1, "removed": 0, "reweighted": 0, "unchanged": 2}
    assert "1 added" in cli.ok("diff", "composite/mixture~1", "composite/mixture").stdout
    v = cli.json("verify", "--json")
    assert v["ok"] and len(v["mixtures"]) == 2
    assert "mixture: ok" in cli.ok("verify").stdout

    # One clear line where a verb has no meaning for a mixture.
    assert "is a mixture" in cli.fails("diff", "composite/mixture", "sites/a", code=4)
    assert "is a mixture" in cli.fails("merge", "composite/mixture", "sites/a", code=4)
    assert "is a mixture" in cli.fails("export", "composite/mixture", tmp_path / "exp", code=4)
    assert "--weights gives 1 weight(s)" in cli.fails("mix", "sites/a", "sites/b", "--weights", "1", code=8)


def test_cli_mix_search_with_a_score_module(cli, tmp_path, bert_adapters):
    repo = tmp_path / "repo"
    cli.ok("init", repo)
    cli = cli.at(repo)
    for s, src in zip("ab", bert_adapters):
        cli.ok("switch", "--orphan", f"sites/{s}")
        cli.ok("commit", src, "-m", f"site {s}")
    (tmp_path / "scoring.py").write_text(
        "import torch\n"
        "from tests.adapters import tiny_bert_classifier as base_model\n"
        "def score(model):\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.randint(0, 64, (4, 8), generator=g)\n"
        "    with torch.no_grad():\n"
        "        return float(-torch.log(model(input_ids=x)[:, 0].clamp_min(1e-9)).mean())\n")
    cli.ok("switch", "--orphan", "mx")
    env = cli.with_env(PYTHONPATH=f"{Path(__file__).resolve().parents[1]}")
    r = env.json("mix", "sites/a", "sites/b", "--search", "weights", "--stagewise", "--score",
                 str(tmp_path / "scoring.py") + ":score", "--budget", "3", "--json")
    s = r["provenance"]["search"]
    assert s["stagewise"] and s["budget"] == 3 and s["scorer"]["base"].endswith(":base_model")
    assert s["chosen"]["score"] <= s["start"]["score"]


def test_a_signed_mixture_verifies_and_each_member_is_judged_on_its_site_branch(cli, tmp_path, bert_adapters):
    keys = tmp_path / "keys"
    for who in ("site-a", "site-b", "coordinator"):
        cli.json("keygen", keys / who, "--json")
    repo = tmp_path / "repo"
    cli.ok("init", repo)
    cli = cli.at(repo)
    for s, src in zip("ab", bert_adapters):
        cli.ok("switch", "--orphan", f"sites/{s}")
        cli.ok("config", "site", s)
        cli.ok("config", "signing.key", keys / f"site-{s}")
        cli.ok("commit", src, "-m", f"site {s}", "--sign")
    cli.ok("config", "site", "coordinator")
    cli.ok("config", "signing.key", keys / "coordinator")
    cli.ok("switch", "--orphan", "main")
    cli.ok("mix", "sites/a", "sites/b", "--weights", "0.5,0.5", "-S")
    lines = [f"{b} {(keys / k).with_suffix('.pub').read_text().strip()}"
             for b, k in (("main", "coordinator"), ("sites/a", "site-a"), ("sites/b", "site-b"))]
    (repo / ".mfgit" / "allowed_signers").write_text("\n".join(lines) + "\n")
    r = cli.json("verify", "main", "--signatures", "--json")
    assert r["ok"], r["failures"]
    assert {e["branch"] for e in r["signatures"]["commits"]} == {"main", "sites/a", "sites/b"}
    # The weights are under the signature: the same commit with another weight does not verify.
    from mfgit.api.repository import Repository
    from mfgit.audit.signing import check_signature

    rp = Repository.open(repo)
    c = rp.read_commit(rp.resolve("main"))
    forged = Commit(**{**c.__dict__, "mixture": {"combine": "softmax", "members": [
        {"commit": m, "weight": 0.9 if i == 0 else w} for i, (m, w) in enumerate(c.mixture_members())]}})
    assert check_signature(c).status == "good"
    assert check_signature(forged).status == "bad"


def test_a_mixture_travels_with_its_members_through_a_remote(tmp_path, mfgit_env, bert_adapters):
    from mfgit.api.repository import Repository

    repo, ids = _site_repo(tmp_path / "repo", bert_adapters[:2], sites=("a", "b"))
    repo.mix(["sites/a", "sites/b"], weights=[0.25, 0.75], branch="composite/mixture")
    Repository.init(tmp_path / "hub.mfgit", bare=True)
    repo.remote_add("hub", str(tmp_path / "hub.mfgit"))
    repo.push("hub", ["composite/mixture"])  # only the mixture's branch: its members go as its parents
    clone = Repository.clone(str(tmp_path / "hub.mfgit"), tmp_path / "clone")
    rev = "origin/composite/mixture"
    assert clone.read_commit(clone.resolve(rev)).mixture_members() == list(zip(ids, [0.25, 0.75]))
    assert clone.fsck()["ok"] and clone.verify(rev)["ok"]
    inputs = _bert_inputs()
    with torch.no_grad():
        got = clone.load_mixture(tiny_bert_classifier(), rev)(**inputs)
    torch.testing.assert_close(got, _reference(bert_adapters[:2], [0.25, 0.75], inputs), rtol=1e-5, atol=1e-6)


def test_verify_and_show_name_a_missing_member(tmp_path, mfgit_env, bert_adapters):
    from mfgit.api.mixture import empty_adapter

    repo, ids = _site_repo(tmp_path / "repo", bert_adapters[:1], sites=("a",))
    absent = "9" * 64
    adapter = repo.put_adapter(empty_adapter({"name": "tiny-bert-classifier", "revision": None}))
    c = Commit(adapter=adapter, parents=(ids[0], absent), author={"name": "x", "email": "x@y"}, site=None,
               timestamp="2026-01-02T03:04:05.000006Z", message="crafted", provenance={"kind": "mixture"},
               mixture={"combine": "softmax", "members": [{"commit": ids[0], "weight": 0.5},
                                                          {"commit": absent, "weight": 0.5}]})
    cid = repo.put_commit(c)
    repo.refs.update("refs/heads/crafted", cid, None, who="test", message="crafted")
    v = repo.verify("crafted")
    assert not v["ok"]
    assert any(f["check"] == "integrity" and absent in f["reason"] for f in v["failures"])
    assert any(f["check"] == "mixture" and "cannot be read" in f["reason"] for f in v["failures"])
    shown = repo.show("crafted")["mixture"]["members"]
    assert "missing" not in shown[0] and shown[1]["missing"]


def test_member_text_written_by_participants_is_escaped_on_the_terminal():
    from mfgit.render.text import mix_text, show_text

    evil = "site \x1b[2J\u202eevil"
    member = {"commit": "a" * 64, "weight": 0.5, "site": "a", "subject": evil}
    report = {"commit": "c" * 64, "adapter": "d" * 64, "members": [member],
              "provenance": {"weights": "given"}}
    shown = {"id": "c" * 64, "commit": {**_fixed_mixture().to_dict(), "message": evil},
             "adapter": {"id": "d" * 64, "base_model": {"name": "b", "revision": None}},
             "mixture": {"combine": "softmax", "weight_sum": 0.5, "members": [member]}}
    for text in (mix_text(report, "main"), show_text(shown, {})):
        assert "\x1b" not in text and "\u202e" not in text and "evil" in text
