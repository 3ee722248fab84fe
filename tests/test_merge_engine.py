"""`Repository.merge` end to end on REAL PEFT LoRA adapters of a tiny Llama.

Every result is checked through the whole stack: commit the adapter
directories, merge, check the composite out as a PEFT directory, and compare
its dense ΔW (`tests.adapters.delta_weights`, computed exactly as PEFT scales
the factors) with a dense float64 reference computed from the INPUT
directories. Nothing here calls mfgit.merge directly.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mfgit.api.repository import Repository
from mfgit.errors import DoraNeedsBaseWeights, IncompatibleAdapters, MergeError
from tests.adapters import delta_weights, make_lora_adapter, module_key, tiny_llama

SITES = ("a", "b", "c", "d")
SAMPLES = {"a": 100, "b": 300, "c": 50, "d": 250}
FIXED_TIME = "2024-05-01T12:00:00.000000Z"

# name -> make_lora_adapter keywords (the base model is one shared tiny Llama)
SPECS = {
    "a": dict(seed=1),
    "b": dict(seed=2),
    "c": dict(seed=3),
    "d": dict(seed=4),
    "a2": dict(seed=11),  # a new version of site a
    "rs": dict(seed=5, r=4, lora_alpha=8, use_rslora=True),
    "pat": dict(seed=6, r=6, lora_alpha=12, rank_pattern={"layers.1.self_attn.v_proj": 3},
                alpha_pattern={"q_proj": 7}),
    "rspat": dict(seed=12, r=8, lora_alpha=4, use_rslora=True, rank_pattern={"q_proj": 4},
                  alpha_pattern={"layers.0.self_attn.v_proj": 32}),
    "q_only": dict(seed=7, target_modules=("q_proj",)),
    "bf_a": dict(seed=8, dtype=torch.bfloat16),
    "bf_b": dict(seed=9, dtype=torch.bfloat16),
    "wide": dict(seed=10, hidden=32, base=None),  # another hidden size: other shapes
}


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _identity(tmp_path_factory):
    """An author identity and a private global config for the whole module."""
    home = tmp_path_factory.mktemp("merge-engine-home")
    mp = pytest.MonkeyPatch()
    for k in list(os.environ):
        if k.startswith("MFGIT_"):
            mp.delenv(k)
    mp.setenv("MFGIT_CONFIG_GLOBAL", str(home / "global.cfg"))
    mp.setenv("MFGIT_AUTHOR_NAME", "Test Author")
    mp.setenv("MFGIT_AUTHOR_EMAIL", "author@example.org")
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    """Every adapter directory of SPECS (plus DoRA and another base), built once."""
    root = tmp_path_factory.mktemp("merge-engine-adapters")
    base = tiny_llama()
    out: dict[str, Path] = {}
    for name, spec in SPECS.items():
        kw = dict(spec)
        if "base" not in kw:
            kw["base"] = base
        elif kw["base"] is None:
            kw.pop("base")
        out[name] = make_lora_adapter(root / name, **kw)
    # The same adapter as `a`, but claiming another base model.
    other = root / "other_base"
    shutil.copytree(out["a"], other)
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "some-other-model"
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    out["other_base"] = other
    # A DoRA adapter, made with PEFT directly.
    from peft import LoraConfig, get_peft_model

    dora = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                   use_dora=True, lora_dropout=0.0))
    with torch.no_grad():
        for n, p in dora.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    dora.save_pretrained(str(root / "dora"))
    out["dora"] = root / "dora"
    return out


@pytest.fixture(scope="module")
def deltas(adapters) -> dict[str, dict[str, torch.Tensor]]:
    """Dense float64 ΔW of every input, exactly as PEFT scales it."""
    return {name: delta_weights(path) for name, path in adapters.items() if name not in ("dora",)}


_branch_ids = itertools.count()


def commit_on(repo: Repository, branch: str, path: Path, site: str, *, meta=None, timestamp=None) -> str:
    """Commit `path` on `branch` (created as an orphan if new) as `site`."""
    if repo.refs.read("refs/heads/" + branch) is None:
        repo.switch(branch, orphan=True)
    else:
        repo.switch(branch)
    repo.config.set("user.site", site)
    return repo.commit(path, f"{site}: {path.name}", meta=meta, timestamp=timestamp).id


def fresh_branch(repo: Repository, prefix: str = "m") -> str:
    """Switch to a new branch with no commit yet, as the coordinator."""
    name = f"merges/{prefix}-{next(_branch_ids)}"
    repo.switch(name, orphan=True)
    repo.config.set("user.site", "coordinator")
    return name


def site_repo(root: Path, adapters: dict[str, Path], names=SITES) -> Repository:
    repo = Repository.init(root)
    for n in names:
        commit_on(repo, f"sites/{n}", adapters[n], n, meta={"samples": SAMPLES.get(n, 1)})
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory, adapters) -> Repository:
    """One repository with sites a..d committed on sites/<x>; tests merge on fresh branches."""
    repo = site_repo(tmp_path_factory.mktemp("merge-engine-repo") / "repo", adapters)
    commit_on(repo, "sites/rs", adapters["rs"], "rs")
    commit_on(repo, "sites/pat", adapters["pat"], "pat")
    commit_on(repo, "sites/rspat", adapters["rspat"], "rspat")
    commit_on(repo, "sites/q_only", adapters["q_only"], "q_only")
    commit_on(repo, "sites/bf_a", adapters["bf_a"], "bf_a")
    commit_on(repo, "sites/bf_b", adapters["bf_b"], "bf_b")
    return repo


_out_ids = itertools.count()


def out_delta(repo: Repository, tmp_path: Path, rev: str = "HEAD") -> tuple[dict[str, torch.Tensor], Path]:
    """Check `rev` out as a PEFT directory and return its dense ΔW (and the directory)."""
    out = repo.checkout(rev, tmp_path / f"out-{next(_out_ids)}")
    return delta_weights(out), out


def combo(deltas, names, weights) -> dict[str, torch.Tensor]:
    """Σ wᵢ ΔWᵢ, a module absent from an input counting as zero."""
    modules = sorted({m for n in names for m in deltas[n]})
    out = {}
    for m in modules:
        acc = None
        for n, w in zip(names, weights):
            if m in deltas[n]:
                t = w * deltas[n][m]
                acc = t if acc is None else acc + t
        out[m] = acc
    return out


def rel_err(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    assert set(got) == set(want), (sorted(got), sorted(want))
    worst = 0.0
    for m in want:
        g, w = got[m].double(), want[m].double()
        assert g.shape == w.shape, (m, g.shape, w.shape)
        worst = max(worst, float((g - w).norm() / max(w.norm(), 1e-30)))
    return worst


def truncated(D: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    U, S, Vh = torch.linalg.svd(D, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k], float((S[:k] ** 2).sum() / (S ** 2).sum())


def peft_layers(out_dir: Path) -> dict[str, dict]:
    """Load `out_dir` with PeftModel.from_pretrained and read back every LoRA layer."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    pm = PeftModel.from_pretrained(tiny_llama(), str(out_dir))
    layers = {}
    for name, mod in pm.named_modules():
        if isinstance(mod, LoraLayer) and "default" in mod.lora_A:
            A = mod.lora_A["default"].weight.detach().double()
            B = mod.lora_B["default"].weight.detach().double()
            s = float(mod.scaling["default"])
            layers[name] = {"r": int(mod.r["default"]), "scaling": s, "delta": s * (B @ A)}
    return layers


# --- identities through the whole stack -------------------------------------------------

IDENTITY_RECIPES = [
    pytest.param("linear", {"rank": "sum"}, id="linear-sum"),
    pytest.param("linear", {}, id="linear-max"),
    pytest.param("svd", {}, id="svd"),
    pytest.param("ties", {"density": 1.0}, id="ties-density1"),
]


@pytest.mark.parametrize("strategy,kw", IDENTITY_RECIPES)
@pytest.mark.parametrize("name", ["a", "rspat"])
def test_one_input_weight_one_gives_the_input(repo, deltas, tmp_path, strategy, kw, name):
    """`rspat` (rsLoRA, rank_pattern, alpha_pattern) also checks the scaling is folded in once."""
    fresh_branch(repo)
    report = repo.merge([f"sites/{name}"], strategy=strategy, weights=[1.0], **kw)
    got, out = out_delta(repo, tmp_path)
    assert rel_err(got, deltas[name]) < 1e-5
    assert report.provenance["inputs"][0]["weight"] == 1.0
    if name == "rspat":  # per-module output ranks 4 and 8: PEFT must read them with scaling 1
        for m, lay in peft_layers(out).items():
            assert lay["scaling"] == 1.0
            torch.testing.assert_close(lay["delta"], got[m], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("strategy,kw", IDENTITY_RECIPES)
def test_weights_one_zero_give_the_first(repo, deltas, tmp_path, strategy, kw):
    fresh_branch(repo)
    repo.merge(["sites/a", "sites/b"], strategy=strategy, weights=[1.0, 0.0], **kw)
    got, _ = out_delta(repo, tmp_path)
    assert rel_err(got, deltas["a"]) < 1e-5


@pytest.mark.parametrize("strategy,kw", IDENTITY_RECIPES)
def test_weight_minus_one_negates(repo, deltas, tmp_path, strategy, kw):
    fresh_branch(repo)
    repo.merge(["sites/rspat"], strategy=strategy, weights=[-1.0], **kw)
    got, _ = out_delta(repo, tmp_path)
    assert rel_err(got, {m: -d for m, d in deltas["rspat"].items()}) < 1e-5


def test_on_a_tip_that_is_not_a_merge_exactly_the_named_revisions_are_merged(repo, deltas, tmp_path):
    tip = repo.resolve("sites/c")
    name = f"work-on-c-{next(_branch_ids)}"
    repo.switch(name, create=True, start="sites/c")
    report = repo.merge(["sites/a", "sites/b"], weights=[0.7, 0.3], rank="sum")
    got, _ = out_delta(repo, tmp_path)
    assert rel_err(got, combo(deltas, ["a", "b"], [0.7, 0.3])) < 1e-6  # c's update is not in it
    head = repo.read_commit(repo.head())
    assert list(head.parents) == [tip, repo.resolve("sites/a"), repo.resolve("sites/b")]
    assert report.provenance["integration"]["mode"] == "one-shot"
    assert [lf["site"] for lf in report.provenance["leaves"]] == ["a", "b"]


def test_linear_sum_is_the_dense_weighted_sum_with_every_scaling(repo, deltas, tmp_path):
    """r=8 / rsLoRA r=4 / r=6 with rank_pattern+alpha_pattern / rsLoRA with patterns."""
    names = ["a", "rs", "pat", "rspat"]
    weights = [0.5, 0.3, -0.2, 0.4]
    fresh_branch(repo)
    report = repo.merge([f"sites/{n}" for n in names], weights=weights, rank="sum")
    got, out = out_delta(repo, tmp_path)
    assert rel_err(got, combo(deltas, names, weights)) < 1e-6
    # rank "sum" per module: Σ of the input ranks of that module (they differ per module here).
    for m, st in report.provenance["modules"].items():
        want_rank = sum(deltas_rank(repo, n, m) for n in names)
        assert st["rank"] == want_rank and st["kept_energy"] == 1.0
    assert len({st["rank"] for st in report.provenance["modules"].values()}) > 1
    # PEFT reads the output with scaling 1 and the recorded ranks.
    layers = peft_layers(out)
    assert set(layers) == set(got)
    for m, lay in layers.items():
        assert lay["scaling"] == 1.0 and lay["r"] == report.provenance["modules"][m]["rank"]
        torch.testing.assert_close(lay["delta"], got[m], rtol=1e-6, atol=1e-9)


def deltas_rank(repo: Repository, name: str, module: str) -> int:
    adapter = repo.read_adapter(repo.read_commit(repo.resolve(f"sites/{name}")).adapter)
    m = adapter.modules.get(module)
    return 0 if m is None else m["r"]


def test_svd_rank_k_is_the_truncated_dense_svd(repo, deltas, tmp_path):
    names, weights, k = ["a", "rs", "pat"], [0.6, 0.3, 0.1], 5
    fresh_branch(repo)
    report = repo.merge([f"sites/{n}" for n in names], strategy="svd", weights=weights, rank=k)
    got, _ = out_delta(repo, tmp_path)
    ref = combo(deltas, names, weights)
    want, energies = {}, {}
    for m, D in ref.items():
        want[m], energies[m] = truncated(D, k)
    assert rel_err(got, want) < 1e-5
    for m, st in report.provenance["modules"].items():
        assert st["rank"] == k
        assert st["kept_energy"] == pytest.approx(energies[m], abs=1e-6)
        assert st["kept_energy"] < 1.0


# --- PEFT round trip ------------------------------------------------------------------------


@pytest.mark.parametrize("strategy,kw", [("linear", {"rank": "sum"}), ("ties", {"density": 0.3})])
def test_peft_loads_the_merge_and_computes_base_plus_delta(repo, tmp_path, strategy, kw):
    from peft import PeftModel

    fresh_branch(repo)
    repo.merge(["sites/a", "sites/b", "sites/c"], strategy=strategy, weights=[0.5, 0.3, 0.2], **kw)
    got, out = out_delta(repo, tmp_path)
    ids = torch.arange(3, 35).unsqueeze(0)
    with torch.no_grad():
        merged = PeftModel.from_pretrained(tiny_llama(), str(out))(input_ids=ids).logits
        base = tiny_llama()
        plain = base(input_ids=ids).logits
        for m, d in got.items():
            base.get_submodule(module_key(m)).weight += d.to(torch.float32)
        by_hand = base(input_ids=ids).logits
    assert (merged - plain).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(merged, by_hand, atol=1e-5, rtol=1e-5)


# --- asynchronous integration ---------------------------------------------------------------

# Arrival orders: a spread of the 24 permutations, including the identity and the reverse.
_PERMS = list(itertools.permutations(SITES))
ORDERS = _PERMS[::3] + [_PERMS[-1]]


@pytest.mark.parametrize("mode", ["uniform", "samples"])
def test_linear_integration_in_any_order_equals_the_one_shot_merge(repo, deltas, tmp_path, mode):
    kw = {"weights_from": "samples"} if mode == "samples" else {}
    if mode == "uniform":
        want_w = {s: 0.25 for s in SITES}
    else:
        total = sum(SAMPLES.values())
        want_w = {s: SAMPLES[s] / total for s in SITES}
    fresh_branch(repo, "oneshot")
    one = repo.merge([f"sites/{s}" for s in SITES], rank="sum", **kw)
    one_delta, _ = out_delta(repo, tmp_path)
    assert rel_err(one_delta, combo(deltas, SITES, [want_w[s] for s in SITES])) < 1e-6
    assert {lf["site"]: lf["weight"] for lf in one.provenance["leaves"]} == pytest.approx(want_w)

    for order in ORDERS:
        fresh_branch(repo, "async")
        first = repo.merge([f"sites/{order[0]}", f"sites/{order[1]}"], rank="sum", **kw)
        assert first.provenance["integration"]["mode"] == "one-shot"
        for s in order[2:]:
            report = repo.merge([f"sites/{s}"])  # the recipe (rank, weights mode) is inherited
            assert report.provenance["integration"]["mode"] == "exact"
            assert report.provenance["integration"]["added"] == [repo.resolve(f"sites/{s}")]
        leaves = report.provenance["leaves"]
        assert len(leaves) == 4
        assert {lf["site"]: lf["weight"] for lf in leaves} == pytest.approx(want_w)
        assert report.provenance["recipe"]["rank"]["kind"] == "sum"
        got, _ = out_delta(repo, tmp_path)
        assert rel_err(got, one_delta) < 1e-6, order
        # The merge commit's parents: the previous composite, then the new site commit.
        head = repo.read_commit(repo.head())
        assert list(head.parents) == [head.parents[0], repo.resolve(f"sites/{order[-1]}")]


def test_new_version_of_a_site_replaces_its_leaf(tmp_path, adapters, deltas):
    repo = site_repo(tmp_path / "repo", adapters)
    old_a = repo.resolve("sites/a")
    fresh_branch(repo, "composite")
    composite = repo.head_branch()
    repo.merge(["sites/a", "sites/b", "sites/c", "sites/d"], rank="sum")
    new_a = commit_on(repo, "sites/a", adapters["a2"], "a", meta={"samples": 100})
    repo.switch(composite)
    repo.config.set("user.site", "coordinator")
    report = repo.merge(["sites/a"])
    prov = report.provenance
    assert len(prov["leaves"]) == 4
    assert {lf["site"]: lf["commit"] for lf in prov["leaves"]}["a"] == new_a
    assert prov["integration"]["replaced"] == [{"key": "site:a", "old": old_a, "new": new_a}]
    assert prov["integration"]["added"] == []
    assert [lf["weight"] for lf in prov["leaves"]] == pytest.approx([0.25] * 4)
    got, _ = out_delta(repo, tmp_path)
    assert rel_err(got, combo(deltas, ["a2", "b", "c", "d"], [0.25] * 4)) < 1e-6
    # Integrating the same version again changes nothing.
    with pytest.raises(MergeError, match="up to date"):
        repo.merge(["sites/a"])


def test_ties_rebuild_is_independent_of_arrival_order(repo):
    ids, modes = [], []
    for order in (("a", "b", "c", "d"), ("d", "b", "a", "c")):
        fresh_branch(repo, "ties")
        repo.merge([f"sites/{order[0]}", f"sites/{order[1]}"], strategy="ties", density=0.3, seed=3)
        for s in order[2:]:
            r = repo.merge([f"sites/{s}"])
            modes.append(r.provenance["integration"]["mode"])
        rebuilt = repo.merge([], rebuild=True)
        assert rebuilt.provenance["integration"]["mode"] == "rebuild"
        assert len(rebuilt.provenance["leaves"]) == 4
        assert rebuilt.provenance["recipe"]["params"]["density"] == 0.3
        ids.append(rebuilt.adapter)
    assert set(modes) == {"incremental"}
    assert ids[0] == ids[1]
    # ... and equal to the one-shot ties merge of the four with the same recipe.
    fresh_branch(repo, "ties-oneshot")
    one = repo.merge([f"sites/{s}" for s in SITES], strategy="ties", density=0.3, seed=3)
    assert one.adapter == ids[0]


# --- determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["dare_ties", "della", "ties"])
def test_same_merge_in_two_fresh_repositories_is_bit_identical(tmp_path, adapters, strategy):
    ids, inputs = [], []
    for k in range(2):
        repo = Repository.init(tmp_path / f"repo{k}")
        for n in ("a", "b", "c"):
            commit_on(repo, f"sites/{n}", adapters[n], n, timestamp=FIXED_TIME)
        inputs.append([repo.resolve(f"sites/{n}") for n in ("a", "b", "c")])
        fresh_branch(repo)
        before = torch.get_rng_state()
        report = repo.merge(["sites/a", "sites/b", "sites/c"], strategy=strategy, weights=[0.5, 0.3, 0.2],
                            seed=7, rank=8)
        assert torch.equal(before, torch.get_rng_state()), "merge touched the global RNG"
        ids.append(report.adapter)
        if strategy == "dare_ties":
            other = repo.merge(["sites/a", "sites/b", "sites/c"], strategy=strategy, weights=[0.5, 0.3, 0.2],
                               seed=8, rank=8)
            assert other.adapter != report.adapter
    assert inputs[0] == inputs[1]
    assert ids[0] == ids[1]


# --- refusals -------------------------------------------------------------------------------


def test_refusals_are_clear_errors_and_commit_nothing(repo, adapters):
    commit_on(repo, "sites/other_base", adapters["other_base"], "other")
    commit_on(repo, "sites/wide", adapters["wide"], "wide")
    commit_on(repo, "sites/dora", adapters["dora"], "dora")
    branch = fresh_branch(repo, "refused")

    with pytest.raises(IncompatibleAdapters, match="base model") as e:
        repo.merge(["sites/a", "sites/other_base"])
    assert "some-other-model" in str(e.value)
    with pytest.raises(IncompatibleAdapters, match="shape") as e:
        repo.merge(["sites/a", "sites/wide"])
    assert "64" in str(e.value) and "32" in str(e.value)
    with pytest.raises(DoraNeedsBaseWeights, match="DoRA"):  # merged only given the base weights (test_dora.py)
        repo.merge(["sites/a", "sites/dora"])
    with pytest.raises(MergeError, match="strategy") as e:
        repo.merge(["sites/a", "sites/b"], strategy="no_such_strategy")
    assert "ties" in str(e.value)  # the message lists the choices
    with pytest.raises(MergeError, match="density") as e:
        repo.merge(["sites/a", "sites/b"], strategy="ties", density=1.5)
    assert "(0, 1]" in str(e.value)
    with pytest.raises(MergeError, match="weight"):
        repo.merge(["sites/a", "sites/b"], weights=[0.5, 0.3, 0.2])
    with pytest.raises(MergeError, match="parameter"):
        repo.merge(["sites/a", "sites/b"], strategy="linear", density=0.5)
    assert repo.refs.read(f"refs/heads/{branch}") is None  # nothing was committed


# --- absent modules -------------------------------------------------------------------------


def test_module_absent_from_an_input_counts_as_zero(repo, deltas, tmp_path):
    fresh_branch(repo)
    report = repo.merge(["sites/a", "sites/q_only"], weights=[0.5, 0.5], rank="sum")
    got, out = out_delta(repo, tmp_path)
    assert rel_err(got, combo(deltas, ["a", "q_only"], [0.5, 0.5])) < 1e-6
    ranks = {m: st["rank"] for m, st in report.provenance["modules"].items()}
    assert {r for m, r in ranks.items() if m.endswith("q_proj")} == {16}
    assert {r for m, r in ranks.items() if m.endswith("v_proj")} == {8}
    for m, lay in peft_layers(out).items():
        assert lay["scaling"] == 1.0 and lay["r"] == ranks[m]
        torch.testing.assert_close(lay["delta"], got[m], rtol=1e-6, atol=1e-9)
    # TIES: an absent module is a zero update, so v_proj is input a's trimmed update alone.
    fresh_branch(repo)
    repo.merge(["sites/a", "sites/q_only"], strategy="ties", density=1.0, weights=[0.5, 0.5])
    got, _ = out_delta(repo, tmp_path)
    for m, d in got.items():
        if m.endswith("v_proj"):
            torch.testing.assert_close(d, deltas["a"][m], rtol=1e-5, atol=1e-8)


# --- provenance, reproduction ---------------------------------------------------------------


def test_merge_commit_records_its_provenance(repo):
    branch = fresh_branch(repo)
    report = repo.merge(["sites/a", "sites/b", "sites/c"], strategy="ties", density=0.3,
                        weights=[0.5, 0.3, 0.2], seed=11, rank=8)
    shown = repo.show("HEAD")
    assert shown["id"] == report.commit
    commit = shown["commit"]
    prov = commit["provenance"]
    assert prov == report.provenance
    ids = [repo.resolve(f"sites/{n}") for n in ("a", "b", "c")]
    assert commit["parents"] == ids
    assert commit["site"] == "coordinator"
    assert repo.head_branch() == branch
    rec = prov["recipe"]
    assert rec["strategy"] == "ties"
    assert rec["params"] == {"density": 0.3, "lambda": 1.0}  # defaults filled in
    assert rec["seed"] == 11
    assert rec["rank"] == {"kind": "fixed", "rank": 8, "energy": None}
    assert rec["weights_mode"] == "explicit"
    assert [i["commit"] for i in prov["inputs"]] == ids
    assert [i["weight"] for i in prov["inputs"]] == [0.5, 0.3, 0.2]
    assert [(lf["commit"], lf["site"], lf["weight"]) for lf in prov["leaves"]] == list(
        zip(ids, ["a", "b", "c"], [0.5, 0.3, 0.2]))
    adapter = repo.read_adapter(report.adapter)
    assert set(prov["modules"]) == set(adapter.modules)
    for st in prov["modules"].values():
        assert st["rank"] == 8 and 0.0 < st["kept_energy"] <= 1.0
    assert prov["device"]["type"] in ("cpu", "cuda")
    assert prov["dtype"] == {"compute": "F32", "output": "F32"}
    for lib in ("mfgit", "torch", "peft"):
        assert prov["versions"][lib]
    import peft

    assert prov["versions"]["torch"] == torch.__version__ and prov["versions"]["peft"] == peft.__version__
    assert prov["wall_time_s"] > 0


@pytest.mark.parametrize("strategy", ["ties", "dare_linear"])
def test_reproduce_merge_is_identical(repo, strategy):
    fresh_branch(repo)
    repo.merge(["sites/a", "sites/b", "sites/rs"], strategy=strategy, weights=[0.4, 0.4, 0.2], seed=5)
    res = repo.reproduce_merge("HEAD")
    assert res["identical"] is True
    assert res["max_abs_diff"] == 0.0


# --- output dtype ---------------------------------------------------------------------------


def test_output_dtype_follows_the_inputs_unless_forced(repo, deltas, tmp_path):
    from safetensors import safe_open

    def dtypes(out: Path) -> set:
        with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
            return {f.get_slice(k).get_dtype() for k in f.keys()}

    fresh_branch(repo)
    report = repo.merge(["sites/bf_a", "sites/bf_b"], rank="sum")
    assert report.provenance["dtype"]["output"] == "BF16"
    got, out = out_delta(repo, tmp_path)
    assert dtypes(out) == {"BF16"}
    assert rel_err(got, combo(deltas, ["bf_a", "bf_b"], [0.5, 0.5])) < 1e-2

    fresh_branch(repo)
    report = repo.merge(["sites/bf_a", "sites/bf_b"], rank="sum", dtype="F32")
    assert report.provenance["dtype"]["output"] == "F32"
    got, out = out_delta(repo, tmp_path)
    assert dtypes(out) == {"F32"}
    # fp32 compute, fp32 output: exact up to fp32 rounding of the (bf16) inputs.
    assert rel_err(got, combo(deltas, ["bf_a", "bf_b"], [0.5, 0.5])) < 1e-6


# --- rank policies --------------------------------------------------------------------------


def test_rank_policies_fixed_sum_energy(repo, deltas, tmp_path):
    names, weights = ["a", "b", "q_only"], [0.5, 0.3, 0.2]
    revs = [f"sites/{n}" for n in names]
    ref = combo(deltas, names, weights)

    fresh_branch(repo)
    fixed = repo.merge(revs, weights=weights, rank=16)
    got, out = out_delta(repo, tmp_path)
    want = {m: truncated(D, 16)[0] for m, D in ref.items()}
    assert rel_err(got, want) < 1e-5
    assert {st["rank"] for st in fixed.provenance["modules"].values()} == {16}

    fresh_branch(repo)
    summed = repo.merge(revs, weights=weights, rank="sum")
    got, out = out_delta(repo, tmp_path)
    assert rel_err(got, ref) < 1e-6
    ranks = {m: st["rank"] for m, st in summed.provenance["modules"].items()}
    assert ranks == {m: (24 if m.endswith("q_proj") else 16) for m in ref}

    fresh_branch(repo)
    energy = repo.merge(revs, weights=weights, energy=0.99)
    assert energy.provenance["recipe"]["rank"]["kind"] == "energy"
    got, out = out_delta(repo, tmp_path)
    ranks = {}
    for m, D in ref.items():
        st = energy.provenance["modules"][m]
        S2 = torch.linalg.svdvals(D) ** 2
        frac = torch.cumsum(S2, 0) / S2.sum()
        r = int((frac < 0.99).sum()) + 1  # the smallest rank keeping 99% of ‖ΔW‖²
        assert st["rank"] == r, m
        assert st["kept_energy"] >= 0.99 and st["kept_energy"] == pytest.approx(float(frac[r - 1]), abs=1e-6)
        torch.testing.assert_close(got[m], truncated(D, r)[0], rtol=1e-4, atol=1e-7)
        ranks[m] = r
    assert len(set(ranks.values())) > 1, ranks  # per-module ranks differ: rank_pattern at work
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["rank_pattern"] and cfg["alpha_pattern"] == cfg["rank_pattern"]
    layers = peft_layers(out)
    assert set(layers) == set(ref)
    for m, lay in layers.items():
        assert lay["scaling"] == 1.0 and lay["r"] == ranks[m]
        torch.testing.assert_close(lay["delta"], got[m], rtol=1e-6, atol=1e-9)
