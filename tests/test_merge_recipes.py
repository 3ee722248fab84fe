"""Recipes the way mergekit and PEFT users write them: `--density` for DARE, mergekit YAML configurations.

A mergekit configuration is read for every method mfgit has, mapped to
mfgit's recipe with mergekit's meaning kept, and recorded next to it; what
mfgit cannot compute as asked is refused with one line naming it. Where the
math is the same, mergekit's own code computes the same update.
"""

from __future__ import annotations

import shutil
import textwrap

import numpy as np
import pytest
import torch

from tests.adapters import delta_weights
from tests.conftest import Cli, build_adapter

SITES = ("a", "b", "c")


@pytest.fixture(scope="module")
def template(tmp_path_factory, adapter_store):
    """A repository with sites/a, sites/b and sites/c committed, built once; (repository, site -> adapter dir)."""
    root = tmp_path_factory.mktemp("recipes-template")
    repo = root / "repo"
    cli = Cli(root / "home", root)
    cli.ok("init", repo)
    dirs = {}
    for i, s in enumerate(SITES):
        dirs[s] = build_adapter(adapter_store, seed=60 + i)
        cli.ok("switch", "--orphan", f"sites/{s}", cwd=repo)
        cli.ok("commit", dirs[s], "-m", f"site {s}", cwd=repo)
    return repo, dirs


@pytest.fixture
def repo_dir(tmp_path, template, mfgit_env):
    """A private copy of the template repository at tmp_path/"repo" (each test merges into its own)."""
    dst = tmp_path / "repo"
    shutil.copytree(template[0], dst, symlinks=True)
    return dst


@pytest.fixture
def sites(repo_dir, template):
    return template[1]


def _merge(cli, repo_dir, branch, *args):
    cli.ok("switch", "--orphan", branch, cwd=repo_dir)
    return cli.json("merge", *args, "--json", cwd=repo_dir)


def _yaml(repo_dir, name, text):
    p = repo_dir / name
    p.write_text(textwrap.dedent(text))
    return p.name


def test_density_gives_the_dare_keep_fraction_as_mergekit_and_peft_name_it(cli, repo_dir, sites):
    by_density = _merge(cli, repo_dir, "m1", "sites/a", "sites/b", "-s", "dare_ties", "--density", "0.3", "--seed", "5")
    by_rate = _merge(cli, repo_dir, "m2", "sites/a", "sites/b", "-s", "dare_ties", "--drop-rate", "0.7", "--seed", "5")
    assert by_density["adapter"] == by_rate["adapter"]
    assert by_density["provenance"]["recipe"]["params"] == {"drop_rate": 0.7, "lambda": 1.0}
    line = cli.fails("merge", "sites/c", "-s", "dare_linear", "--density", "0.3", "--drop-rate", "0.7",
                     cwd=repo_dir, code=8)
    assert "given twice" in line


def test_mergekit_ties_recipe_equals_the_same_merge_given_as_options(cli, repo_dir, sites):
    name = _yaml(repo_dir, "ties.yml", """\
        merge_method: ties
        base_model: tiny-llama-test
        models:
          - model: sites/a
            parameters: {weight: 0.5, density: 0.25}
          - model: sites/b
            parameters: {weight: 0.3, density: 0.25}
          - model: sites/c
            parameters: {weight: 0.2, density: 0.25}
        parameters:
          normalize: true
          int8_mask: true
        dtype: float32
        """)
    from_yaml = _merge(cli, repo_dir, "m1", "--recipe", name, "--rank", "16")
    direct = _merge(cli, repo_dir, "m2", "sites/a", "sites/b", "sites/c", "-s", "ties", "--density", "0.25",
                    "--weights", "0.5,0.3,0.2", "--rank", "16", "--dtype", "F32")
    assert from_yaml["adapter"] == direct["adapter"]
    src = from_yaml["provenance"]["recipe_source"]
    assert src["format"] == "mergekit" and src["config"]["merge_method"] == "ties"
    assert src["config"]["models"][0] == {"model": "sites/a", "parameters": {"weight": 0.5, "density": 0.25}}
    assert any("int(f*n)" in d for d in src["differences"])
    assert "recipe_source" not in direct["provenance"]


def test_mergekit_linear_normalises_the_weights_as_mergekit_does(cli, repo_dir, sites):
    name = _yaml(repo_dir, "linear.yml", """\
        merge_method: linear
        models:
          - {model: sites/a, parameters: {weight: 2}}
          - {model: sites/b, parameters: {weight: 6}}
        """)
    got = _merge(cli, repo_dir, "m1", "--recipe", name)
    assert [i["weight"] for i in got["provenance"]["inputs"]] == [0.25, 0.75]


@pytest.mark.parametrize("text,needle", [
    ("merge_method: passthrough\nmodels: [{model: sites/a, parameters: {weight: 1}}]\n", "passthrough"),
    ("merge_method: ties\nmodels: [{model: sites/a, parameters: {weight: 1}}]\ntokenizer_sorce: base\n",
     "tokenizer_sorce"),
    ("merge_method: ties\nmodels: [{model: sites/a, parameters: {weight: 1, densty: 0.2}}]\n", "densty"),
    ("merge_method: ties\nmodels:\n  - {model: sites/a, parameters: {weight: 1, density: 0.2}}\n"
     "  - {model: sites/b, parameters: {weight: 1, density: 0.5}}\n", "different density"),
    ("merge_method: ties\nslices: []\n", "slices"),
    ("merge_method: dare_ties\nmodels: [{model: sites/a, parameters: {weight: 1, density: 0.5}}]\n", "normalize"),
    ("merge_method: ties\nmodels: [{model: sites/a, parameters: {weight: [0, 1]}}]\n", "gradient"),
])
def test_mergekit_recipes_mfgit_cannot_merge_as_asked_are_refused_in_one_line(cli, repo_dir, sites, text, needle):
    (repo_dir / "bad.yml").write_text(text)
    cli.ok("switch", "--orphan", "m", cwd=repo_dir)
    line = cli.fails("merge", "--recipe", "bad.yml", cwd=repo_dir, code=8)
    assert needle in line and "mergekit recipe" in line


def test_mfgit_ties_equals_mergekits_own_ties_on_the_same_updates(cli, repo_dir, sites, tmp_path):
    """mergekit's ties (normalize: true) on the dense updates, with a base of zeros, gives mfgit's update."""
    api = pytest.importorskip("mergekit.merge_methods.api")
    weights, density = [0.5, 0.3, 0.2], 0.25  # 0.25·4096 is a whole number: both counting rules agree
    got = _merge(cli, repo_dir, "m", "sites/a", "sites/b", "sites/c", "-s", "ties", "--density", str(density),
                 "--weights", ",".join(map(str, weights)), "--rank", "64")
    out = tmp_path / "merged"
    cli.ok("checkout", got["commit"], "--to", out, cwd=repo_dir)
    mine = delta_weights(out)
    ins = {s: delta_weights(d) for s, d in sites.items()}
    for name, d in mine.items():
        deltas = [ins[s][name].to(torch.float32) for s in SITES]
        theirs = api.merge_tensors([torch.zeros_like(deltas[0]), *deltas], "ties", base_index=0,
                                   parameters={"weight": weights, "density": density, "normalize": True})
        np.testing.assert_allclose(d.numpy(), theirs.double().numpy(), rtol=1e-5, atol=1e-7)


# --- mergekit's methods from the angles between models ------------------------------------------

ANGULAR = {
    "model_stock": ("""\
        merge_method: model_stock
        base_model: tiny-llama-test
        models: [{model: sites/a}, {model: sites/b}, {model: sites/c}]
        parameters: {filter_wise: false}
        """, ["sites/a", "sites/b", "sites/c", "-s", "model_stock"]),
    "slerp": ("""\
        merge_method: slerp
        base_model: sites/b
        models: [{model: sites/a}, {model: sites/b}]
        parameters: {t: 0.3}
        """, ["sites/b", "sites/a", "-s", "slerp", "--weights", "0.7,0.3"]),
    "nuslerp": ("""\
        merge_method: nuslerp
        base_model: tiny-llama-test
        models:
          - {model: sites/a, parameters: {weight: 3}}
          - {model: sites/c, parameters: {weight: 1}}
        parameters: {nuslerp_flatten: false, nuslerp_row_wise: true}
        """, ["sites/a", "sites/c", "-s", "nuslerp", "--weights", "0.75,0.25", "--param", "flatten=false",
              "--param", "row_wise=true"]),
    "karcher": ("""\
        merge_method: karcher
        models: [{model: sites/a}, {model: sites/b}, {model: sites/c}]
        parameters: {max_iter: 15, tol: 1.0e-6}
        """, ["sites/a", "sites/b", "sites/c", "-s", "karcher", "--param", "max_iter=15", "--param", "tol=1e-6"]),
}


def _mergekits(api, method: str, ins: dict, name: str) -> torch.Tensor:
    """mergekit's merge_tensors on the dense updates of one module, as the YAML above asks."""
    d = {s: ins[s][name].to(torch.float32) for s in SITES}
    zero = torch.zeros_like(d["a"])
    if method == "model_stock":  # a base of zeros: the updates are the task vectors
        return api.merge_tensors([zero, d["a"], d["b"], d["c"]], "model_stock", base_index=0)
    if method == "slerp":  # base_model (sites/b) is v0; merge_tensors SLERPs whole tensors
        return api.merge_tensors([d["b"], d["a"]], "slerp", base_index=0, parameters={"t": 0.3})
    if method == "nuslerp":
        return api.merge_tensors([zero, d["a"], d["c"]], "nuslerp", base_index=0,
                                 parameters={"weight": [3.0, 1.0], "nuslerp_flatten": False, "nuslerp_row_wise": True})
    return api.merge_tensors([d["a"], d["b"], d["c"]], "karcher", parameters={"max_iter": 15, "tol": 1e-6})


@pytest.mark.parametrize("method", sorted(ANGULAR))
def test_mergekit_angular_recipe_equals_the_options_and_mergekits_own_result(cli, repo_dir, sites, tmp_path, method):
    api = pytest.importorskip("mergekit.merge_methods.api")
    text, options = ANGULAR[method]
    from_yaml = _merge(cli, repo_dir, "m1", "--recipe", _yaml(repo_dir, f"{method}.yml", text))
    direct = _merge(cli, repo_dir, "m2", *options)
    assert from_yaml["adapter"] == direct["adapter"]
    assert from_yaml["provenance"]["recipe"]["rank"]["kind"] == "sum"  # exact by default
    out = tmp_path / "merged"
    cli.ok("checkout", from_yaml["commit"], "--to", out, cwd=repo_dir)
    ins = {s: delta_weights(d) for s, d in sites.items()}
    for name, d in delta_weights(out).items():
        theirs = _mergekits(api, method, ins, name).double()
        np.testing.assert_allclose(d.numpy(), theirs.numpy(), rtol=0, atol=1e-5 * float(theirs.abs().max()))


def test_mergekit_slerp_recipe_records_that_mergekit_interpolates_full_weights(cli, repo_dir, sites):
    got = _merge(cli, repo_dir, "m", "--recipe", _yaml(repo_dir, "slerp.yml", ANGULAR["slerp"][0]))
    differences = got["provenance"]["recipe_source"]["differences"]
    assert any("full weights" in d for d in differences)
    assert [i["weight"] for i in got["provenance"]["inputs"]] == [0.7, 0.3]
    assert [i["label"] for i in got["provenance"]["inputs"]] == ["sites/b", "sites/a"]


@pytest.mark.parametrize("text,needle", [
    ("merge_method: slerp\nbase_model: tiny-llama-test\nmodels: [{model: sites/a}, {model: sites/b}]\n"
     "parameters: {t: 0.5}\n", "name one of the two adapters as base_model"),
    ("merge_method: slerp\nbase_model: sites/a\nmodels: [{model: sites/a}, {model: sites/b}, {model: sites/c}]\n"
     "parameters: {t: 0.5}\n", "exactly two models"),
    ("merge_method: slerp\nbase_model: sites/a\nmodels: [{model: sites/a}, {model: sites/b}]\n", "parameters.t"),
    ("merge_method: slerp\nbase_model: sites/a\nmodels: [{model: sites/a}, {model: sites/b}]\n"
     "parameters: {t: [0, 1]}\n", "gradient"),
    ("merge_method: nuslerp\nbase_model: sites/a\nmodels: [{model: sites/a, parameters: {weight: 1}}, "
     "{model: sites/b, parameters: {weight: 1}}]\n", "must not be one of them"),
    ("merge_method: nuslerp\nmodels: [{model: sites/a, parameters: {weight: 1}}, {model: sites/b}]\n",
     "parameters.weight"),
    ("merge_method: model_stock\nmodels: [{model: sites/a, parameters: {weight: 1}}, {model: sites/b}]\n",
     "takes no weight"),
    ("merge_method: karcher\nmodels: [{model: sites/a}, {model: sites/b}]\nparameters: {max_iters: 3}\n",
     "max_iters"),
])
def test_mergekit_angular_recipes_mfgit_cannot_merge_as_asked_are_refused_in_one_line(cli, repo_dir, sites, text,
                                                                                     needle):
    (repo_dir / "bad.yml").write_text(text)
    cli.ok("switch", "--orphan", "m", cwd=repo_dir)
    line = cli.fails("merge", "--recipe", "bad.yml", cwd=repo_dir, code=8)
    assert needle in line and "mergekit recipe" in line
