"""Recipes the way mergekit and PEFT users write them: `--density` for DARE, mergekit YAML configurations.

A mergekit configuration is read for every method mfgit has, mapped to
mfgit's recipe with mergekit's meaning kept, and recorded next to it; what
mfgit cannot compute as asked is refused with one line naming it. Where the
math is the same, mergekit's own code computes the same update.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from tests.adapters import delta_weights

SITES = ("a", "b", "c")


@pytest.fixture
def sites(cli, repo_dir, adapter_dir):
    dirs = {}
    for i, s in enumerate(SITES):
        dirs[s] = adapter_dir(s, seed=60 + i)
        cli.ok("switch", "--orphan", f"sites/{s}", cwd=repo_dir)
        cli.ok("commit", dirs[s], "-m", f"site {s}", cwd=repo_dir)
    return dirs


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
