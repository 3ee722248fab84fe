"""Core Space, KnOTS, Model Stock, SLERP, NuSLERP and Karcher merges through the real CLI on real MiniLM adapters.

Three all-MiniLM-L6-v2 LoRA sites (ranks 8, 8 and 4, so the bases mix
ranks) are committed once; each test merges them with `mfgit merge`, checks
the result out, loads it with `PeftModel.from_pretrained` and compares every
module PEFT applies with the dense reference of the unit tests, computed
from the input directories (tests.adapters.delta_weights). The random
strategies' draws are the documented ones, seeded per (seed, strategy,
module, input adapter id).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mfgit.merge.engine import module_seed
from tests.adapters import delta_weights, make_minilm_adapter, minilm_model
from tests.conftest import Cli, isolated_env
from tests.test_merge_cli import peft_deltas
from tests.test_merge_spherical import nuslerp_parallel, ref_interpolate, ref_karcher, ref_model_stock
from tests.test_merge_subspace import ref_core, ref_knots, steps

SITES = ("a", "b", "c")
RANKS = {"a": (8, 16), "b": (8, 8), "c": (4, 8)}  # (r, lora_alpha)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("methods-adapters")
    return {s: make_minilm_adapter(root / s, seed=70 + i, r=RANKS[s][0], lora_alpha=RANKS[s][1])
            for i, s in enumerate(SITES)}


@pytest.fixture(scope="module")
def template(tmp_path_factory, built) -> Path:
    from mfgit.api.repository import Repository

    root = tmp_path_factory.mktemp("methods-template")
    # Committed in process (one process, not one per command); the tests merge through the CLI.
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith("MFGIT_")]:
            mp.delenv(k)
        for k, v in isolated_env(root / "home").items():
            if k.startswith("MFGIT_"):
                mp.setenv(k, v)
        repo = Repository.init(root / "repo")
        for s in SITES:
            repo.switch(f"sites/{s}", orphan=True)
            repo.commit(built[s], f"site {s}")
    return root / "repo"


@pytest.fixture(scope="module")
def inputs(built, template) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """(per site: module -> dense ΔW in float64, per site: its adapter id)."""
    from mfgit.api.repository import Repository

    repo = Repository.open(template)
    ids = {s: repo.read_commit(repo.resolve(f"sites/{s}")).adapter for s in SITES}
    return {s: {m: d.numpy() for m, d in delta_weights(built[s]).items()} for s in SITES}, ids


def _merged(tmp_path: Path, template: Path, *args: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Merge in a private copy of the template repository; (provenance, module -> ΔW as PEFT loads it)."""
    repo = tmp_path / "repo"
    shutil.copytree(template, repo)
    cli = Cli(tmp_path / "home", repo)
    cli.ok("switch", "--orphan", "merged")
    prov = cli.json("merge", *args, "--json")["provenance"]
    out = tmp_path / "merged"
    cli.ok("checkout", "HEAD", "--to", out)
    pm, loaded = peft_deltas(minilm_model(), out)
    pm.unload()
    return prov, {m: d.numpy() for m, d in loaded.items()}


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want) and len(want) == 12  # 6 layers × query, value
    for m, w in want.items():
        np.testing.assert_allclose(got[m], w, rtol=0, atol=1e-4 * np.abs(w).max(), err_msg=m)


SUBSPACE = [
    ("core_ties", ["--density", "0.3"], {"density": 0.3}),
    ("core_dare_linear", ["--drop-rate", "0.5", "--seed", "3"], {"drop_rate": 0.5}),
    ("core_dare_ties", ["--density", "0.6", "--seed", "4"], {"drop_rate": 0.4}),
    ("core_breadcrumbs", ["--param", "beta=0.5", "--param", "gamma=0.05"], {"beta": 0.5, "gamma": 0.05}),
    ("core_della", ["--drop-rate", "0.3", "--param", "epsilon=0.1", "--seed", "5"], {"drop_rate": 0.3, "epsilon": 0.1}),
    ("knots_ties", ["--density", "0.2"], {"density": 0.2}),
    ("knots_dare_linear", ["--drop-rate", "0.3", "--seed", "6"], {"drop_rate": 0.3}),
    ("knots_dare_ties", ["--drop-rate", "0.2"], {"drop_rate": 0.2}),
]


@pytest.mark.slow
@pytest.mark.parametrize("strategy,options,params", SUBSPACE, ids=[s for s, _, _ in SUBSPACE])
def test_subspace_merge_of_real_adapters_loads_in_peft_as_the_dense_reference(tmp_path, template, inputs, strategy,
                                                                               options, params):
    deltas, ids = inputs
    ws = [0.5, 0.3, 0.2]
    prov, got = _merged(tmp_path, template, "sites/a", "sites/b", "sites/c", "-s", strategy, *options,
                        "--weights", ",".join(map(str, ws)), "--param", "lambda=1.2", "--rank", "sum")
    seed = int(prov["recipe"]["seed"])
    ref = ref_core if strategy.startswith("core_") else ref_knots
    want = {}
    for m in deltas["a"]:
        def rng(i: int, m: str = m) -> torch.Generator:
            return torch.Generator().manual_seed(module_seed(seed, strategy, m, ids[SITES[i]]))

        want[m] = ref([deltas[s][m] for s in SITES], steps(strategy, params, ws, rng), 1.2)
    _same(got, want)
    assert all(st["rank"] <= 20 for st in prov["modules"].values())  # ≤ Σ rᵢ: the cores are 20 × 20 at most


@pytest.mark.slow
def test_model_stock_of_real_adapters_is_exact_by_default_and_loads_in_peft(tmp_path, template, inputs):
    deltas, _ = inputs
    prov, got = _merged(tmp_path, template, "sites/a", "sites/b", "sites/c", "-s", "model_stock")
    assert prov["recipe"]["rank"]["kind"] == "sum" and prov["kept_energy"]["min"] == 1.0
    _same(got, {m: ref_model_stock([deltas[s][m] for s in SITES], [1 / 3] * 3) for m in deltas["a"]})


@pytest.mark.slow
def test_slerp_of_real_adapters_loads_in_peft_as_the_dense_reference(tmp_path, template, inputs):
    deltas, _ = inputs
    prov, got = _merged(tmp_path, template, "sites/a", "sites/c", "-s", "slerp", "--weights", "0.7,0.3")
    assert all(st["rank"] == 8 + 4 for st in prov["modules"].values())
    _same(got, {m: ref_interpolate(deltas["a"][m], deltas["c"][m], 0.7, 0.3) for m in deltas["a"]})


@pytest.mark.slow
def test_nuslerp_per_row_of_real_adapters_loads_in_peft_as_the_dense_reference(tmp_path, template, inputs):
    deltas, _ = inputs
    _, got = _merged(tmp_path, template, "sites/b", "sites/a", "-s", "nuslerp", "--param", "flatten=false")
    _same(got, {m: ref_interpolate(deltas["b"][m], deltas["a"][m], 0.5, 0.5, "rows", nuslerp_parallel)
                for m in deltas["a"]})


@pytest.mark.slow
def test_karcher_of_real_adapters_loads_in_peft_as_the_dense_reference(tmp_path, template, inputs):
    deltas, _ = inputs
    _, got = _merged(tmp_path, template, "sites/a", "sites/b", "sites/c", "-s", "karcher", "--param", "max_iter=20")
    _same(got, {m: ref_karcher([deltas[s][m] for s in SITES], [1 / 3] * 3, 20) for m in deltas["a"]})


def test_slerp_of_three_revisions_is_refused_in_one_line(tmp_path, template):
    repo = tmp_path / "repo"
    shutil.copytree(template, repo)
    cli = Cli(tmp_path / "home", repo)
    cli.ok("switch", "--orphan", "merged")
    line = cli.fails("merge", "sites/a", "sites/b", "sites/c", "-s", "slerp", code=8)
    assert "slerp merges exactly 2 inputs, got 3" in line
    line = cli.fails("merge", "sites/a", "sites/b", "-s", "nuslerp", "--param", "flatten=2", code=8)
    assert "flatten must be true or false" in line
