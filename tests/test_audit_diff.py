"""`mfgit diff`: per-module comparison of two commits' adapters.

Every number is checked against a plain dense float64 computation on the
ΔW = scaling · B @ A of real PEFT adapters (tests.adapters.delta_weights),
and the command's output must be byte-identical from run to run.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.adapters import delta_weights
from tests.conftest import Cli, build_adapter

REL = 1e-6


@pytest.fixture(scope="module")
def env(tmp_path_factory, adapter_store):
    """A repository with commits of adapters a, b (other seed, rsLoRA, patterns, bf16),
    a2 (a with one module changed) and c (other target modules)."""
    root = tmp_path_factory.mktemp("audit-diff")
    cli = Cli(root / "home", root)
    dirs = {
        "a": build_adapter(adapter_store, seed=1),
        "b": build_adapter(adapter_store, seed=2, use_rslora=True, rank_pattern={"v_proj": 4},
                           alpha_pattern={"q_proj": 8}, dtype=torch.bfloat16),
        "c": build_adapter(adapter_store, seed=3, target_modules=("q_proj", "k_proj")),
    }
    # a2: adapter a with one module's lora_B changed, everything else byte-identical.
    from safetensors.torch import load_file, save_file

    a2 = root / "a2"
    shutil.copytree(dirs["a"], a2)
    tensors = load_file(str(a2 / "adapter_model.safetensors"))
    key = sorted(k for k in tensors if k.endswith("layers.1.self_attn.q_proj.lora_B.weight"))[0]
    tensors[key] = tensors[key] * 0.5 + 0.01
    save_file(tensors, str(a2 / "adapter_model.safetensors"), metadata={"format": "pt"})
    dirs["a2"] = a2
    repo = root / "repo"
    cli.ok("init", repo)
    cli = cli.at(repo)
    for name in ("a", "b", "c", "a2"):
        cli.ok("switch", "--orphan", f"sites/{name}")
        cli.ok("commit", dirs[name], "-m", f"adapter {name}")
    return cli, repo, dirs


def _dense_basis(dw: np.ndarray) -> np.ndarray:
    u, s, _ = np.linalg.svd(dw, full_matrices=False)
    k = int(np.sum(s > s[0] * max(dw.shape) * 1e-10))
    return u[:, :k]


def _close(got, want, rel=REL, abs_=1e-12):
    assert got == pytest.approx(want, rel=rel, abs=abs_), (got, want)


def test_diff_numbers_match_dense_float64(env):
    cli, repo, dirs = env
    d = cli.json("diff", "sites/a", "sites/b", "--json")
    da = {k: v.numpy() for k, v in delta_weights(dirs["a"]).items()}
    db = {k: v.numpy() for k, v in delta_weights(dirs["b"]).items()}
    assert [m["name"] for m in d["modules"]] == sorted(da)
    assert d["summary"]["changed"] == 4 and d["summary"]["unchanged"] == 0
    tot_a = tot_b = tot_d = tot_in = 0.0
    for m in d["modules"]:
        A, B = da[m["name"]], db[m["name"]]
        assert m["status"] == "changed"
        na, nb, nd = np.linalg.norm(A), np.linalg.norm(B), np.linalg.norm(A - B)
        inner = float(np.sum(A * B))
        _close(m["norm_a"], na)
        _close(m["norm_b"], nb)
        _close(m["norm_diff"], nd)
        _close(m["rel_diff"], nd / na)
        _close(m["cosine"], inner / (na * nb), rel=1e-5, abs_=1e-9)
        qa, qb = _dense_basis(A), _dense_basis(B)
        cos = np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), 0, 1)
        assert len(m["subspace"]["cosines"]) == min(qa.shape[1], qb.shape[1])
        np.testing.assert_allclose(m["subspace"]["cosines"], cos, rtol=1e-6, atol=1e-9)
        _close(m["subspace"]["mean_cos2"], float(np.mean(cos ** 2)))
        tot_a, tot_b, tot_d, tot_in = tot_a + na ** 2, tot_b + nb ** 2, tot_d + nd ** 2, tot_in + inner
    # v_proj has rank 4 in b (rank_pattern), q_proj is r=8 on both sides.
    ranks = {m["name"].rsplit(".", 1)[-1]: (m["rank_a"], m["rank_b"]) for m in d["modules"]}
    assert ranks["v_proj"] == (8, 4) and ranks["q_proj"] == (8, 8)
    s = d["summary"]
    _close(s["norm_a"], tot_a ** 0.5)
    _close(s["norm_b"], tot_b ** 0.5)
    _close(s["rel_diff"], (tot_d / tot_a) ** 0.5)
    _close(s["cosine"], tot_in / (tot_a * tot_b) ** 0.5, rel=1e-5, abs_=1e-9)
    # The JSON names both revisions' commit and adapter ids.
    shows = {r: cli.json("show", r, "--json") for r in ("sites/a", "sites/b")}
    assert d["a"]["commit"] == shows["sites/a"]["id"] and d["b"]["commit"] == shows["sites/b"]["id"]
    assert d["a"]["adapter"] == shows["sites/a"]["commit"]["adapter"]
    assert d["config"]["use_rslora"] == {"a": False, "b": True}


def test_added_removed_unchanged_and_identical(env):
    cli, repo, dirs = env
    d = cli.json("diff", "sites/a", "sites/a2", "--json")
    by = {m["name"]: m for m in d["modules"]}
    changed = [n for n, m in by.items() if m["status"] == "changed"]
    assert changed == [n for n in by if n.endswith("layers.1.self_attn.q_proj")]
    assert d["summary"] == {**d["summary"], "changed": 1, "unchanged": 3, "added": 0, "removed": 0}
    da, da2 = delta_weights(dirs["a"]), delta_weights(dirs["a2"])
    (name,) = changed
    _close(by[name]["norm_diff"], float(torch.linalg.norm(da[name] - da2[name])))
    # Only B changed: the column space of B is still 8-dimensional, angles are not all 0.
    assert len(by[name]["subspace"]["cosines"]) == 8
    for n, m in by.items():
        if m["status"] == "unchanged":
            assert m["norm_a"] == m["norm_b"] and "cosine" not in m

    d = cli.json("diff", "sites/a", "sites/c", "--json")
    status = {m["name"].rsplit(".", 1)[-1] + m["name"].split("layers.")[1][:1]: m["status"] for m in d["modules"]}
    assert status == {"k_proj0": "added", "k_proj1": "added", "q_proj0": "changed", "q_proj1": "changed",
                      "v_proj0": "removed", "v_proj1": "removed"}
    dc, da = delta_weights(dirs["c"]), delta_weights(dirs["a"])
    for m in d["modules"]:
        if m["status"] == "added":
            _close(m["norm_b"], float(torch.linalg.norm(dc[m["name"]])))
            assert m["norm_a"] is None
        if m["status"] == "removed":
            _close(m["norm_a"], float(torch.linalg.norm(da[m["name"]])))
    # Everything that is in one and not the other counts in the overall change.
    total_diff = sum(float(torch.linalg.norm((dc.get(k, 0) - da.get(k, 0)))) ** 2 for k in set(dc) | set(da))
    _close(d["summary"]["norm_diff"], total_diff ** 0.5)

    d = cli.json("diff", "sites/a", "sites/a", "--json")
    assert d["identical"] and d["summary"]["unchanged"] == 4
    assert d["summary"]["rel_diff"] == 0.0 and d["summary"]["cosine"] == pytest.approx(1.0, abs=1e-7)


def test_output_is_byte_identical_and_text_readable(env):
    cli, repo, dirs = env
    for args in (("sites/a", "sites/b", "--json"), ("sites/a", "sites/b"), ("sites/c", "sites/b", "--stat")):
        first = cli.ok("diff", *args).stdout
        second = cli.ok("diff", *args).stdout
        assert first == second and first
    text = cli.ok("diff", "sites/a", "sites/c").stdout
    assert "A  model.layers.0.self_attn.k_proj" in text and "D  model.layers.1.self_attn.v_proj" in text
    assert text.strip().splitlines()[-1].startswith("6 module(s): 2 changed, 2 added, 2 removed, 0 unchanged")
    stat = cli.json("diff", "sites/a", "sites/a2", "--stat", "--json")
    assert [m["status"] for m in stat["modules"]] == ["changed"] and "subspace" not in stat["modules"][0]
    # Numbers are written with 8 significant digits.
    d = json.loads(cli.ok("diff", "sites/a", "sites/b", "--json").stdout)
    for m in d["modules"]:
        for k in ("norm_a", "norm_b", "norm_diff", "rel_diff", "cosine"):
            assert float(f"{m[k]:.8g}") == m[k]


def test_unknown_revision_is_one_line_error(env):
    cli, repo, dirs = env
    line = cli.fails("diff", "sites/a", "no-such-branch")
    assert "no-such-branch" in line
