"""`mfgit demo`: the MedForge workflow end to end, through the real command.

One run of the demo (3 sites + 1 late, about 20-60 s on 2 cores) is shared
by the end-to-end checks; the data split is checked on its own (no
training). Every number checked here comes from the files and repositories
the run leaves behind, read back independently of the demo's own code where
that matters (the asynchronous-integration equality is recomputed from the
stored factors).
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

SITES = ["amsterdam", "boston", "chennai"]
LATE = "dakar"
COMPOSITES = ["linear", "ties", "svd"]
TIME_LIMIT_S = 180


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cli = Cli(root / "home", root, isolated_env(root / "home"))
    t0 = time.perf_counter()
    res = cli("demo", "run", "--sites", "3", "--seed", "0", timeout=600)
    elapsed = time.perf_counter() - t0
    return {"res": res, "elapsed": elapsed, "work": root / "run", "cli": cli}


def _ok(demo_run):
    res = demo_run["res"]
    assert res.returncode == 0, f"mfgit demo exited {res.returncode}:\n{res.stderr}\n{res.stdout}"
    return demo_run["work"]


def _results(work: Path) -> dict:
    return json.loads((work / "results.json").read_text(encoding="utf-8"))


def test_demo_exits_zero_in_time(demo_run):
    _ok(demo_run)
    assert demo_run["elapsed"] < TIME_LIMIT_S, f"the demo took {demo_run['elapsed']:.1f} s"
    out = demo_run["res"].stdout
    assert "not a clinical model" in out  # says plainly what the model and data are
    assert "mfgit log --graph" in out and "mfgit checkout HEAD --to" in out  # what to try next


def test_table_has_every_row_and_column(demo_run):
    work = _ok(demo_run)
    out = demo_run["res"].stdout
    md = (work / "results.md").read_text(encoding="utf-8")
    rows = ["base model", *(f"site {s}" for s in SITES), f"site {LATE} (late)",
            *(f"composite {k} (3 sites)" for k in COMPOSITES), f"main: linear + {LATE} (4 sites)",
            "tuned: linear, searched on public split (4 sites)"]
    table_lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in table_lines[0].strip("|").split("|")]
    for test_set in [*SITES, f"{LATE}*", "overall"]:
        assert f"{test_set} acc" in header and f"{test_set} AUC" in header, header
    body = {ln.strip("|").split("|")[0].strip(): ln for ln in table_lines[1:] if not ln.startswith("|---")}
    assert sorted(body) == sorted(rows)
    for name, line in body.items():
        cells = [c.strip() for c in line.strip("|").split("|")][2:]
        assert len(cells) == len(header) - 2
        assert all(0.0 <= float(c) <= 1.0 for c in cells), line
        assert name in out  # the printed table has the row too
    for test_set in [*SITES, "overall"]:
        assert test_set in out


def test_results_json_numbers(demo_run):
    work = _ok(demo_run)
    r = _results(work)
    assert r["sites"] == SITES and r["late_site"] == LATE
    assert r["test_sets"] == [*SITES, LATE, "overall"]
    assert len(r["rows"]) == 1 + 4 + 3 + 1 + 1
    for row in r["rows"]:
        assert set(row["metrics"]) == set(r["test_sets"])
        for m in row["metrics"].values():
            for key in ("acc", "auc"):
                assert isinstance(m[key], float) and 0.0 <= m[key] <= 1.0, (row["name"], m)
    assert sum(r["test_sizes"][s] for s in [*SITES, LATE]) == r["test_sizes"]["overall"]
    assert r["data"]["samples"] == 569 and r["data"]["features"] == 30


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
        assert prov["kind"] == "merge" and prov["recipe"]["strategy"] == k
        assert prov["recipe"]["weights_mode"] == "meta:samples"
        assert sorted(lf["commit"] for lf in prov["leaves"]) == sorted(site_ids[s] for s in SITES)
        assert math.isclose(sum(lf["weight"] for lf in prov["leaves"]), 1.0, rel_tol=1e-9)
    samples = {s: coord.read_commit(site_ids[s]).provenance["meta"]["samples"] for s in SITES}
    lin = coord.read_commit(coord.resolve("composite/linear")).provenance
    for lf in lin["leaves"]:
        site = lf["site"]
        assert math.isclose(lf["weight"], samples[site] / sum(samples.values()), rel_tol=1e-9)
    svd = coord.read_commit(coord.resolve("composite/svd")).provenance
    assert svd["recipe"]["rank"] == {"kind": "fixed", "rank": 8, "energy": None}
    assert all(m["rank"] == 8 for m in svd["modules"].values())
    # main = the linear composite with the late site integrated into it
    main = coord.read_commit(coord.resolve("main"))
    assert coord.head_branch() == "main"
    assert list(main.parents) == [coord.resolve("composite/linear"), site_ids[LATE]]
    assert main.provenance["integration"]["mode"] == "exact"
    assert sorted(lf["site"] for lf in main.provenance["leaves"]) == sorted([*SITES, LATE])
    # site commits carry their training provenance
    for s in [*SITES, LATE]:
        c = coord.read_commit(site_ids[s])
        assert c.site == s
        meta = c.provenance["meta"]
        for key in ("samples", "epochs", "lr", "val_acc", "val_auc"):
            assert key in meta, (s, meta)
        assert 0.0 <= meta["val_acc"] <= 1.0 and 0.0 <= meta["val_auc"] <= 1.0
        assert c.provenance["base_model"]["name"] == "mfgit-demo/breast-cancer-transformer"


def test_tuned_composite_records_its_search(demo_run):
    """The tuned row: weights searched on the coordinator's public split, every evaluation recorded."""
    from mfgit.api.repository import Repository

    work = _ok(demo_run)
    r = _results(work)
    coord = Repository.open(work / "coordinator")
    prov = coord.read_commit(coord.resolve("composite/tuned")).provenance
    s = prov["search"]
    assert r["tuned"]["commit"] == coord.resolve("composite/tuned")
    assert s["optimiser"]["name"] == "nevergrad.NGOpt" and s["budget"] == 40 and s["seed"] == 0
    assert len(s["evaluations"]) == 41 and s["chosen"]["score"] <= s["start"]["score"]
    assert sorted(lf["site"] for lf in prov["leaves"]) == sorted([*SITES, LATE])
    assert "public validation split" in demo_run["res"].stdout


def test_hub_has_the_site_branches(demo_run):
    from mfgit.api.repository import Repository

    work = _ok(demo_run)
    hub = Repository.open(work / "hub.mfgit")
    assert hub.is_bare
    branches = {b["name"] for b in hub.branches()}
    assert {f"sites/{s}" for s in [*SITES, LATE]} <= branches
    assert {"main", *(f"composite/{k}" for k in COMPOSITES)} <= branches
    for s in [*SITES, LATE]:
        site_repo = Repository.open(work / "sites" / s)
        assert site_repo.site() == s
        assert hub.resolve(f"sites/{s}") == site_repo.resolve(f"sites/{s}")
    assert hub.fsck()["ok"]


def test_async_integration_equals_one_shot_merge(demo_run):
    import torch

    from mfgit.api.repository import Repository
    from mfgit.formats import peft as peftfmt

    work = _ok(demo_run)
    r = _results(work)
    assert r["async_integration"]["max_abs_diff"] < 1e-5
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
    assert integrated.keys() == oneshot.keys() and integrated
    worst = max(float((integrated[k] - oneshot[k]).abs().max()) for k in integrated)
    assert worst < 1e-5
    # and it is the samples-weighted sum of the four site updates
    samples = {s: coord.read_commit(coord.resolve(f"origin/sites/{s}")).provenance["meta"]["samples"]
               for s in [*SITES, LATE]}
    total = sum(samples.values())
    site_deltas = {s: deltas(f"origin/sites/{s}") for s in samples}
    for k, d in integrated.items():
        expected = sum(samples[s] / total * site_deltas[s][k] for s in samples)
        assert torch.allclose(d, expected, atol=1e-6)


def test_results_png_is_a_valid_png(demo_run):
    work = _ok(demo_run)
    data = (work / "results.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 400 and height > 300
    assert data[-8:-4] == b"IEND"


def test_demo_leaves_a_usable_base_model_and_adapters(demo_run):
    import torch

    from mfgit.api.repository import Repository
    from mfgit.demo.model import load_base

    work = _ok(demo_run)
    assert (work / "base" / "model.safetensors").is_file() and (work / "base" / "config.json").is_file()
    cli = demo_run["cli"].at(work / "coordinator")
    assert "Integrate late site" in cli("log", "--graph").stdout
    out = work / "exported"
    assert cli("checkout", "HEAD", "--to", out).returncode == 0
    assert (out / "adapter_config.json").is_file()
    model = Repository.open(work / "coordinator").load_adapter(load_base(work / "base"), "composite/ties")
    assert model(torch.zeros(2, 30)).shape == (2, 2)


def test_demo_refuses_a_non_empty_workdir(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    cli = Cli(tmp_path / "home", tmp_path)
    res = cli("demo", "busy")
    assert res.returncode == 2
    assert res.stderr.strip().startswith("mfgit: ") and "not empty" in res.stderr
    assert "Traceback" not in res.stderr


def test_site_split_is_non_iid_and_disjoint():
    from mfgit.demo.data import load_demo_data

    names = ["a", "b", "c", "d"]
    d = load_demo_data(names, seed=0)
    parts = [d.public, *d.sites]
    assert sum(len(p.y_train) + len(p.y_test) for p in parts) == 569
    rows = np.concatenate([np.concatenate([p.x_train, p.x_test]) for p in parts])
    assert len(np.unique(rows, axis=0)) == 569  # no sample in two places
    fractions = [float(np.concatenate([s.y_train, s.y_test]).mean()) for s in d.sites]
    assert max(fractions) - min(fractions) > 0.3  # hospitals differ in case mix
    assert len({len(s.y_train) for s in d.sites}) > 1  # and in size
    for s in d.sites:
        assert set(np.unique(s.y_test)) == {0, 1}  # AUC is defined on every site
    again = load_demo_data(names, seed=0)
    assert all(np.array_equal(a.x_train, b.x_train) for a, b in zip(d.sites, again.sites))
