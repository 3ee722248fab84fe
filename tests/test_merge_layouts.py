"""Merges of layers whose ΔW PEFT stores transposed: GPT-2's Conv1D (fan_in_fan_out) and embeddings.

Regressions: every strategy refused fan_in_fan_out LoRAs, sending the user
to "a strategy that supports it" that did not exist; DELLA on an embedding
LoRA ranked along the embedding dimension instead of along token rows (as
for linear layers, and as mergekit does on the full weight).

Each result is checked against a plain dense reference computed in the base
layer's own layout from the input directories (tests.adapters.delta_weights
transposes as PEFT's get_delta_weight does).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.adapters import delta_weights, make_gpt2_adapter, make_lora_adapter, tiny_gpt2
from tests.test_merge_strategies import ref_elect_mean, ref_magprune, ref_top


def _sites(cli, repo_dir, dirs):
    for name, d in dirs.items():
        cli.ok("switch", "--orphan", f"sites/{name}", cwd=repo_dir)
        cli.ok("commit", d, "-m", name, cwd=repo_dir)
    cli.ok("switch", "--orphan", "main", cwd=repo_dir)


def _merged(cli, repo_dir, tmp_path, *merge_args):
    cli.ok("merge", *merge_args, cwd=repo_dir)
    out = tmp_path / "merged"
    cli.ok("checkout", "HEAD", "--to", out, cwd=repo_dir)
    return out


@pytest.fixture
def gpt2_sites(cli, repo_dir, tmp_path):
    dirs = {n: make_gpt2_adapter(tmp_path / "in" / n, seed=s) for n, s in (("a", 1), ("b", 2))}
    _sites(cli, repo_dir, dirs)
    return {n: delta_weights(d) for n, d in dirs.items()}


def test_fan_in_fan_out_lora_merges_linearly_exactly_and_keeps_its_flag(cli, repo_dir, tmp_path, gpt2_sites):
    from peft import PeftModel

    out = _merged(cli, repo_dir, tmp_path, "sites/a", "sites/b", "--weights", "0.7,0.4", "--rank", "sum")
    assert json.loads((out / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    got = delta_weights(out)
    assert set(got) == set(gpt2_sites["a"])
    for name, d in got.items():
        want = 0.7 * gpt2_sites["a"][name] + 0.4 * gpt2_sites["b"][name]
        assert torch.allclose(d, want, rtol=1e-5, atol=1e-7), name
    # PEFT itself applies it as the same update of the Conv1D weights.
    base = tiny_gpt2()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, str(out)).merge_and_unload()
    for name, d in got.items():
        key = name.removeprefix("base_model.model.") + ".weight"
        assert torch.allclose(merged.state_dict()[key].double() - before[key].double(), d, atol=1e-6), key


def test_fan_in_fan_out_ties_equals_the_dense_reference_in_the_layer_layout(cli, repo_dir, tmp_path, gpt2_sites):
    out = _merged(cli, repo_dir, tmp_path, "sites/a", "sites/b", "-s", "ties", "--density", "0.4",
                  "--weights", "1,0.5", "--rank", "32")
    got = delta_weights(out)
    for name, d in got.items():
        taus = [ref_top(gpt2_sites[s][name].numpy(), 0.4) for s in ("a", "b")]
        want = ref_elect_mean(taus, [1.0, 0.5])
        np.testing.assert_allclose(d.numpy(), want, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(want).max()))


def test_della_on_an_embedding_ranks_token_rows(cli, repo_dir, tmp_path):
    from mfgit.api.repository import Repository
    from mfgit.merge.engine import module_seed

    dirs = {n: make_lora_adapter(tmp_path / "in" / n, seed=s, target_modules=("embed_tokens",))
            for n, s in (("a", 3), ("b", 4))}
    _sites(cli, repo_dir, dirs)
    p, eps = 0.3, 0.1
    out = _merged(cli, repo_dir, tmp_path, "sites/a", "sites/b", "-s", "della", "--drop-rate", str(p),
                  "--param", f"epsilon={eps}", "--weights", "1,1", "--rank", "64")
    repo = Repository.open(repo_dir)
    ids = {s: repo.read_commit(repo.resolve(f"sites/{s}")).adapter for s in ("a", "b")}
    deltas = {s: delta_weights(d) for s, d in dirs.items()}
    got = delta_weights(out)
    (name,) = got
    vocab, dim = got[name].shape
    assert (vocab, dim) == (128, 64)  # rows are tokens: the base layer's own layout
    taus = []
    for s in ("a", "b"):
        g = torch.Generator().manual_seed(module_seed(0, "della", name, ids[s]))
        u = torch.rand((vocab, dim), generator=g, dtype=torch.float32).double().numpy()
        t = deltas[s][name].to(torch.float32).double().numpy()
        taus.append(ref_magprune(t, u, p, eps))
    want = ref_elect_mean(taus, [1.0, 1.0])
    np.testing.assert_allclose(got[name].numpy(), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_adapters_that_disagree_on_fan_in_fan_out_are_refused_in_one_line(cli, repo_dir, tmp_path):
    a = make_gpt2_adapter(tmp_path / "in" / "a", seed=1, target_modules=("c_attn",))
    b = make_gpt2_adapter(tmp_path / "in" / "b", seed=2, target_modules=("c_attn",))
    cfg = json.loads((b / "adapter_config.json").read_text())
    cfg["fan_in_fan_out"] = False
    (b / "adapter_config.json").write_text(json.dumps(cfg))
    _sites(cli, repo_dir, {"a": a, "b": b})
    line = cli.fails("merge", "sites/a", "sites/b", cwd=repo_dir, code=8)
    assert "fan_in_fan_out" in line
