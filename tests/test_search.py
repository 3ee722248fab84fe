"""Coefficient search (`merge --search`) on real clinical data.

The sites are real: a tiny foundation model (tests/tinysites.py) pre-trained on the public
split of scikit-learn's breast-cancer data, and one LoRA per hospital
trained on its own non-IID share (tests/tinysites.py). The coordinator's score is
the cross-entropy on the *public* validation split, which it legitimately
has; no site data is used by the search.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("nevergrad")

from tests.conftest import Cli, isolated_env  # noqa: E402

SITES = ["amsterdam", "boston", "chennai"]
SITE_EPOCHS = 12


def build_demo_sites(root: Path) -> dict:
    """Base model + one LoRA per site on the demo data, committed on sites/<name> in root/coord."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from peft import LoraConfig, get_peft_model

    from mfgit.api.repository import Repository
    from tests.tinysites import (LORA, LORA_TARGETS, MODEL_NAME, PRETRAIN, build_base, load_base, load_demo_data,
                                 save_base, sort_target_modules, train)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            data = load_demo_data(SITES, seed=0)
            base = build_base(seed=0)
            train(base, data.public.x_train, data.public.y_train, epochs=PRETRAIN["epochs"], lr=PRETRAIN["lr"],
                  batch_size=PRETRAIN["batch_size"], seed=0)
            save_base(base, root / "base")
            repo = Repository.init(root / "coord")
            repo.config.set("user.name", "Coordinator")
            repo.config.set("user.email", "coord@example.org")
            commits = {}
            for i, split in enumerate(data.sites):
                repo.switch(f"sites/{split.name}", orphan=True)
                torch.manual_seed(101 + i)
                cfg = LoraConfig(target_modules=list(LORA_TARGETS), r=LORA["r"], lora_alpha=LORA["lora_alpha"],
                                 lora_dropout=0.0)
                cfg.base_model_name_or_path = MODEL_NAME
                model = get_peft_model(load_base(root / "base"), cfg)
                train(model, split.x_train, split.y_train, epochs=SITE_EPOCHS, lr=LORA["lr"],
                      batch_size=LORA["batch_size"], seed=101 + i)
                out = root / "adapters" / split.name
                model.save_pretrained(str(out), save_embedding_layers=False)
                sort_target_modules(out / "adapter_config.json")
                commits[split.name] = repo.commit(out, f"{split.name} LoRA", meta={"samples": len(split.y_train)}).id
            repo.switch("main", orphan=True)
    finally:
        torch.set_num_threads(threads)
    shutil.copyfile(Path(__file__).with_name("tinysites.py"), root / "tinysites.py")
    (root / "scoremod.py").write_text(textwrap.dedent(f"""
        import torch
        from torch.nn import functional as F

        from tinysites import load_base, load_demo_data

        CALLS = []

        def base_model():
            return load_base({str(root / 'base')!r})

        def load_data():
            pub = load_demo_data({SITES!r}, seed=0).public
            return pub.x_test, pub.y_test

        @torch.no_grad()
        def score(model, data):
            x, y = data
            return float(F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)))
    """), encoding="utf-8")
    return {"root": root, "base": root / "base", "repo": root / "coord", "data": data, "commits": commits}


_BUILT: dict[str, dict] = {}


def demo_sites(tmp_path_factory) -> dict:
    """The built sites, once per session (tests/test_notes.py uses the base model and adapters too)."""
    if "sites" not in _BUILT:
        _BUILT["sites"] = build_demo_sites(tmp_path_factory.mktemp("demo-sites"))
    return _BUILT["sites"]


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    return demo_sites(tmp_path_factory)


def ce_loss(model, data) -> float:
    import torch
    from torch.nn import functional as F

    x, y = data
    with torch.no_grad():
        return float(F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)))


def _repo(sites):
    from mfgit.api.repository import Repository

    return Repository.open(sites["repo"])


def _public(sites):
    pub = sites["data"].public
    return pub.x_test, pub.y_test


def _base_factory(sites):
    from tests.tinysites import load_base

    return lambda: load_base(sites["base"])


def _deltas(repo, rev):
    from mfgit.formats import peft as peftfmt

    a = repo.read_adapter(repo.read_commit(repo.resolve(rev)).adapter)
    out = {}
    for name, m in a.modules.items():
        A = repo.load_tensor(a.tensors[m["lora_A"]]["id"]).double()
        B = repo.load_tensor(a.tensors[m["lora_B"]]["id"]).double()
        out[name] = peftfmt.module_scaling(a.config, name, m["r"])[2] * (B @ A)
    return out


def test_search_is_at_least_as_good_as_uniform_and_reproducible(sites):
    import torch

    from tests.tinysites import load_base

    repo = _repo(sites)
    revs = [f"sites/{s}" for s in SITES]
    data = _public(sites)
    kw = dict(strategy="linear", search="weights", score=ce_loss, base=_base_factory(sites), data=data,
              budget=12, seed=0)
    repo.switch("searched-1", orphan=True)
    first = repo.merge(revs, **kw)
    repo.switch("searched-2", orphan=True)
    second = repo.merge(revs, **kw)
    repo.switch("uniform", orphan=True)
    uniform = repo.merge(revs, strategy="linear")

    s1, s2 = first.provenance["search"], second.provenance["search"]
    # the same seed: the same trajectory, the same composite
    assert [(e["weights"], e["score"]) for e in s1["evaluations"]] == [(e["weights"], e["score"]) for e in s2["evaluations"]]
    assert first.adapter == second.adapter and first.commit != second.commit
    # what the commit records
    assert s1["optimiser"]["name"] == "nevergrad.NGOpt" and s1["optimiser"]["version"]
    assert s1["budget"] == 12 and s1["bounds"] == [-1.5, 1.5] and s1["seed"] == 0 and s1["l1"] == 0.0
    assert len(s1["evaluations"]) == 13  # the start, then every proposal of the budget
    assert s1["start"]["weights"] == pytest.approx([1 / 3] * 3)
    chosen = s1["chosen"]
    assert chosen["score"] == min(e["score"] for e in s1["evaluations"] if e["score"] is not None)
    assert [i["weight"] for i in first.provenance["inputs"]] == chosen["weights"]
    assert all(-1.5 <= w <= 1.5 for e in s1["evaluations"] for w in e["weights"])
    assert first.provenance["recipe"]["weights_mode"] == "explicit"

    # measured independently from the committed adapters: searched <= uniform on the score data
    with torch.random.fork_rng(devices=[]):
        searched_loss = ce_loss(repo.load_adapter(load_base(sites["base"]), first.commit), data)
        uniform_loss = ce_loss(repo.load_adapter(load_base(sites["base"]), uniform.commit), data)
    assert searched_loss == pytest.approx(chosen["score"], abs=1e-6)
    assert searched_loss <= uniform_loss + 1e-9
    assert s1["start"]["score"] == pytest.approx(uniform_loss, abs=1e-6)

    # the candidate is the exact weighted sum of the updates (ΔW space, never A and B scaled apart)
    merged = _deltas(repo, first.commit)
    parts = {s: _deltas(repo, f"sites/{s}") for s in SITES}
    for module, d in merged.items():
        expected = sum(w * parts[s][module] for w, s in zip(chosen["weights"], SITES))
        assert torch.allclose(d, expected, atol=1e-6), module
    # and a recorded search re-runs bit for bit from its recorded weights
    assert repo.reproduce_merge(first.commit)["identical"]


def test_l1_penalty_is_the_mean_absolute_weight_as_lorahub_and_medforge_define_it(sites):
    """Regression: the penalty was l1·Σ|w|, n times LoraHub's and MedForge's l1·mean|w| for the same --l1
    (four sites at 0.05 were penalised as if --l1 were 0.2), and it drove Fusion's weights towards 0."""
    repo = _repo(sites)
    repo.switch("searched-l1", orphan=True)
    rep = repo.merge([f"sites/{s}" for s in SITES], search="weights", score=ce_loss, base=_base_factory(sites),
                     data=_public(sites), budget=6, seed=3, l1=0.05, bounds=(-1.0, 1.0))
    s = rep.provenance["search"]
    assert s["l1"] == 0.05 and s["bounds"] == [-1.0, 1.0] and s["seed"] == 3
    for e in s["evaluations"]:
        assert e["objective"] == pytest.approx(e["score"] + 0.05 * sum(abs(w) for w in e["weights"]) / len(SITES))
    assert s["objective"] == "score + l1 * mean(|w|), minimised"
    assert s["chosen"]["objective"] == min(e["objective"] for e in s["evaluations"])


def test_layer_weights_search(sites):
    from mfgit.merge.layers import layer_groups, merge_layer_weights
    from mfgit.merge.engine import MergeInput, Recipe
    from mfgit.merge.lowrank import RankPolicy

    repo = _repo(sites)
    repo.switch("searched-layers", orphan=True)
    rep = repo.merge([f"sites/{s}" for s in SITES], search="layer-weights", score=ce_loss,
                     base=_base_factory(sites), data=_public(sites), budget=8, seed=0)
    s = rep.provenance["search"]
    assert s["layout"]["groups"] == ["blocks.0", "blocks.1"]
    assert len(s["chosen"]["matrix"]) == 3 and all(len(r) == 2 for r in s["chosen"]["matrix"])
    assert rep.provenance["linear"] is False  # no single weight per leaf
    assert repo.reproduce_merge(rep.commit)["identical"]
    # the same weight in every layer is bit-identical to the plain merge
    inputs = [MergeInput(s_, repo.resolve(f"sites/{s_}"), repo.read_adapter(repo.read_commit(repo.resolve(f"sites/{s_}")).adapter), 0.3)
              for s_ in SITES]
    rec = Recipe("linear", {}, 0, RankPolicy("sum"), "cpu", None).resolved()
    load = lambda oid, dev: repo.load_tensor(oid, device=dev)  # noqa: E731
    groups = layer_groups(inputs)
    per_layer = merge_layer_weights(inputs, rec, [[0.3] * len(groups)] * 3, groups, load)
    repo.switch("plain-0.3", orphan=True)
    plain = repo.merge([f"sites/{s_}" for s_ in SITES], weights=[0.3] * 3)
    a = repo.store_adapter_tensors(per_layer.config, per_layer.tensors, base_model=inputs[0].adapter.base_model)
    assert a == plain.adapter
    # a plain integration would drop the per-layer weights: refused
    repo.switch("searched-layers")
    from mfgit.errors import MergeError

    with pytest.raises(MergeError, match="per-layer"):
        repo.merge([f"sites/{SITES[0]}"], weights=[0.5], rebuild=True)


def test_score_function_gets_only_the_candidate_and_its_own_data(sites):
    """The search passes the candidate model and the coordinator's own data object, nothing else."""
    from peft import PeftModel

    repo = _repo(sites)
    data = _public(sites)
    calls = []

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return ce_loss(*args)

    repo.switch("recorded", orphan=True)
    repo.merge([f"sites/{s}" for s in SITES], search="weights", score=recording, base=_base_factory(sites),
               data=data, budget=4, seed=0)
    assert calls
    for args, kwargs in calls:
        assert kwargs == {} and len(args) == 2
        assert isinstance(args[0], PeftModel)
        assert args[1] is data  # the very object given: no site's data is ever added


def test_search_errors_are_one_line(sites):
    from mfgit.errors import MergeError, ScoreError

    repo = _repo(sites)
    repo.switch("errors", orphan=True)
    revs = [f"sites/{s}" for s in SITES]
    with pytest.raises(MergeError, match="sparsifying strategy"):
        repo.merge(revs, strategy="linear", search="weights+density", score=ce_loss, base=_base_factory(sites))
    with pytest.raises(MergeError, match="bounds"):
        repo.merge(revs, search="weights", score=ce_loss, base=_base_factory(sites), bounds=(1, -1))
    with pytest.raises(ScoreError, match="base model"):
        repo.merge(revs, search="weights", score=ce_loss, budget=2)
    with pytest.raises(ScoreError, match="'score' entry"):
        repo.merge(revs, search="weights", score=lambda m, d: {"auc": 1.0}, base=_base_factory(sites),
                   data=_public(sites), budget=2)
    with pytest.raises(ScoreError, match="raised ZeroDivisionError"):
        repo.merge(revs, search="weights", score=lambda m, d: 1 / 0, base=_base_factory(sites), data=1, budget=2)
    with pytest.raises(ScoreError, match="cannot import no_such_module_xyz") as err:
        repo.merge(revs, search="weights", score="no_such_module_xyz:score")
    from mfgit.cli.errors import BAD_INPUT, lookup

    code, line = lookup(err.value)
    assert code == BAD_INPUT and line.startswith("mfgit: score function no_such_module_xyz:score: ")
    assert "docs/search-and-eval.md" in line
    assert repo.head() is None  # nothing was committed


def test_cli_search_with_a_score_module(sites, tmp_path):
    """`--score MODULE:FUNC` from the directory mfgit runs in; base_model() and load_data() come from that module."""
    cli = Cli(tmp_path / "home", sites["root"], isolated_env(tmp_path / "home"))
    repo = sites["repo"]
    cli.ok("-C", repo, "switch", "--orphan", "cli-search")
    revs = [f"sites/{s}" for s in SITES]
    res = cli.ok("-C", repo, "merge", *revs, "-s", "linear", "--search", "weights", "--score", "scoremod:score",
                 "--budget", "5", "--seed", "0", "--l1", "0.05", "--bounds=-1,1")
    assert "search: weights with nevergrad.NGOpt" in res.stdout and "chosen score" in res.stdout
    s = cli.json("-C", repo, "show", "--json", "cli-search")["commit"]["provenance"]["search"]
    assert {k: s["scorer"][k] for k in ("score", "base", "data")} == {
        "score": "scoremod:score", "base": "scoremod:base_model", "data": "scoremod:load_data"}
    assert s["l1"] == 0.05 and s["bounds"] == [-1.0, 1.0] and len(s["evaluations"]) == 6


def test_search_tunes_weights_and_density_of_a_sparsifying_strategy_and_replays(sites):
    """mergekit-evolve's habit: any strategy's weights, and its density, searched; the merge replays bit for bit."""
    repo = _repo(sites)
    repo.switch("ties-search", orphan=True)
    revs = [f"sites/{s}" for s in SITES]
    report = repo.merge(revs, strategy="ties", density=0.5, rank=8, search="weights+density", score=ce_loss,
                        base=_base_factory(sites), data=_public(sites), budget=6, seed=3)
    prov = report.provenance
    s = prov["search"]
    assert s["mode"] == "weights+density" and len(s["evaluations"]) == 7
    assert s["sparsity"]["param"] == "density" and s["start"]["weights"][-1] == 0.5
    chosen = s["chosen"]
    assert prov["recipe"]["strategy"] == "ties" and prov["recipe"]["params"]["density"] == chosen["density"]
    assert [i["weight"] for i in prov["inputs"]] == chosen["weights"]
    assert all(0.01 <= e["weights"][-1] <= 1.0 for e in s["evaluations"])
    (m,) = repo.verify(report.commit, reproduce=True)["reproduce"]["merges"]
    assert m["outcome"] == "bit-identical", m
