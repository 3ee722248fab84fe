"""`mfgit lineage` and `mfgit blame` on real adapters and real merges.

Four sites are merged in three rounds (two composites of two sites each, then
a composite of the composites); the effective weight of every leaf is checked
against a hand computation, and the composite's update against
Σ effective weight × the leaf's update computed densely. The HTML page is
loaded in headless Chromium (Selenium) and clicked.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.adapters import delta_weights
from tests.browser import graph_shape, headless_chromium, severe_errors
from tests.conftest import Cli, build_adapter, in_process_env

SITES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def env(tmp_path_factory, adapter_store):
    root = tmp_path_factory.mktemp("audit-lineage")
    cli = Cli(root / "home", root)
    dirs = {s: build_adapter(adapter_store, seed=40 + i) for i, s in enumerate(SITES)}
    repo_dir = root / "repo"
    cli = cli.at(repo_dir)
    # A second version of site a, with one module changed (for blame).
    from safetensors.torch import load_file, save_file

    a2 = root / "a2"
    shutil.copytree(dirs["a"], a2)
    t = load_file(str(a2 / "adapter_model.safetensors"))
    key = next(k for k in sorted(t) if k.endswith("layers.0.self_attn.v_proj.lora_A.weight"))
    t[key] = t[key] * 2
    save_file(t, str(a2 / "adapter_model.safetensors"), metadata={"format": "pt"})

    from mfgit.api.repository import Repository

    # The history is built in process (one process, not one per command); the tests drive the CLI on it.
    with in_process_env(cli.env):
        repo = Repository.init(repo_dir)
        for s in SITES:
            repo.switch(f"sites/{s}", orphan=True)
            repo.config.set("site", f"hospital-{s}")
            repo.commit(dirs[s], f"site {s} round 1", meta=["samples=100"])
        repo.switch("sites/a")
        repo.commit(a2, "site a round 2: retrained v_proj")
        repo.config.set("site", "coordinator")
        # Round 1 and 2: two composites; round 3: a composite of composites.
        repo.switch("m1", orphan=True)
        repo.merge(["sites/a~1", "sites/b"], weights=[0.7, 0.3], rank="sum", message="round 1: a + b")
        repo.switch("m2", orphan=True)
        repo.merge(["sites/c", "sites/d"], weights=[0.4, 0.6], rank="sum", lambda_=1.5, message="round 2: c + d")
        repo.switch("main", orphan=True)
        repo.merge(["m1", "m2"], weights=[0.5, 0.5], rank="sum", lambda_=2.0, message="round 3: m1 + m2")
        # An element-wise composite in the graph: c and d merged with TIES.
        repo.switch("t", orphan=True)
        repo.merge(["sites/c", "sites/d"], strategy="ties", density=0.5, weights=[0.5, 0.5], message="ties c + d")
        repo.switch("mixed", orphan=True)
        repo.merge(["m1", "t"], weights=[0.25, 0.75], rank="sum", message="m1 + ties")
        repo.switch("main")
    return cli, repo_dir, dirs, a2


def _ids(cli: Cli, *revs: str) -> dict[str, str]:
    return {r: cli.json("show", r, "--json")["id"] for r in revs}


def test_effective_weights_four_sites_three_rounds(env):
    cli, repo_dir, dirs, _ = env
    d = cli.json("lineage", "main", "--json")
    ids = _ids(cli, "main", "m1", "m2", "sites/a~1", "sites/b", "sites/c", "sites/d")
    assert d["root"] == ids["main"] and d["linear"] is True
    # Hand computation: λ3·w·λ·w' along each path.
    want = {
        "hospital-a": 2.0 * 0.5 * 1.0 * 0.7,   # 0.7
        "hospital-b": 2.0 * 0.5 * 1.0 * 0.3,   # 0.3
        "hospital-c": 2.0 * 0.5 * 1.5 * 0.4,   # 0.6
        "hospital-d": 2.0 * 0.5 * 1.5 * 0.6,   # 0.9
    }
    got = {lf["site"]: lf["effective_weight"] for lf in d["leaves"]}
    assert got == pytest.approx(want, rel=1e-12)
    assert {lf["commit"] for lf in d["leaves"]} == {ids[r] for r in ("sites/a~1", "sites/b", "sites/c", "sites/d")}
    assert all(lf["linear"] and lf["exact"] and lf["paths"] == 1 for lf in d["leaves"])
    # The merge recorded the same leaf weights.
    prov = cli.json("show", "main", "--json")["commit"]["provenance"]
    recorded = {lf["site"]: lf["effective_weight"] for lf in prov["leaves"]}
    assert recorded == pytest.approx(want, rel=1e-12)
    # Nodes: 3 merges with their recipes, 4 leaves with author/time/message.
    kinds = {n["id"]: n["kind"] for n in d["nodes"]}
    assert sorted(kinds.values()) == ["leaf"] * 4 + ["merge"] * 3
    root = next(n for n in d["nodes"] if n["id"] == ids["main"])
    assert root["recipe"]["strategy"] == "linear" and root["lambda"] == 2.0
    assert {(e["from"], e["to"], e["weight"]) for e in d["edges"]} == {
        (ids["main"], ids["m1"], 0.5), (ids["main"], ids["m2"], 0.5),
        (ids["m1"], ids["sites/a~1"], 0.7), (ids["m1"], ids["sites/b"], 0.3),
        (ids["m2"], ids["sites/c"], 0.4), (ids["m2"], ids["sites/d"], 0.6)}
    leaf = next(n for n in d["nodes"] if n["id"] == ids["sites/b"])
    assert leaf["site"] == "hospital-b" and leaf["message"] == "site b round 1" and leaf["author"]["name"]

    # The composite really is Σ effective weight × leaf update (rank sum: exact up to fp32).
    out = repo_dir.parent / "main-out"
    cli.ok("checkout", "main", "--to", out)
    composite = delta_weights(out)
    leaves = {s: delta_weights(dirs[s]) for s in SITES}
    for name, dw in composite.items():
        ref = sum(want[f"hospital-{s}"] * leaves[s][name] for s in SITES)
        assert torch.allclose(dw, ref, rtol=1e-5, atol=1e-7), name


def test_nonlinear_strategy_marks_leaves_not_linear(env):
    cli, *_ = env
    d = cli.json("lineage", "mixed", "--json")
    ids = _ids(cli, "t")
    got = {lf["site"]: lf for lf in d["leaves"]}
    assert got["hospital-a"]["effective_weight"] == pytest.approx(0.25 * 0.7)
    assert got["hospital-b"]["effective_weight"] == pytest.approx(0.25 * 0.3)
    for s in ("hospital-c", "hospital-d"):
        assert got[s]["effective_weight"] is None and got[s]["linear"] is False
        assert got[s]["nonlinear_via"] == [ids["t"]]
    assert d["linear"] is False
    text = cli.ok("lineage", "mixed").stdout
    assert f"not linear (via {ids['t'][:10]})" in text and "merge ties" in text


def test_text_and_dot(env):
    cli, *_ = env
    text = cli.ok("lineage", "main").stdout
    assert "merge linear λ=2" in text and "w=0.7" in text and "round 2: c + d" in text
    assert text.count("hospital-") == 4 + 4  # in the tree and in the leaves table
    dot = cli.ok("lineage", "main", "--dot").stdout
    assert dot.startswith("digraph lineage {") and dot.rstrip().endswith("}")
    assert dot.count(" -> ") == 6 and 'label="0.7"' in dot and "effective 0.9" in dot
    # Deterministic output.
    assert cli.ok("lineage", "main", "--dot").stdout == dot
    assert cli.ok("lineage", "main", "--json").stdout == cli.ok("lineage", "main", "--json").stdout


def test_blame_first_parent(env):
    cli, repo_dir, _, _ = env
    ids = _ids(cli, "sites/a", "sites/a~1", "main")
    d = cli.json("blame", "sites/a", "--json")
    by = {m["module"].split("layers.")[1]: m for m in d["modules"]}
    assert by["0.self_attn.v_proj"]["commit"] == ids["sites/a"]
    assert by["0.self_attn.v_proj"]["subject"] == "site a round 2: retrained v_proj"
    for k in ("0.self_attn.q_proj", "1.self_attn.q_proj", "1.self_attn.v_proj"):
        assert by[k]["commit"] == ids["sites/a~1"] and by[k]["site"] == "hospital-a"
    # A merge produces new tensors for every module: they are blamed on it.
    d = cli.json("blame", "main", "--all", "--json")
    assert {m["commit"] for m in d["modules"]} == {ids["main"]} and d["first_parent"] is False
    text = cli.ok("blame", "sites/a").stdout
    assert text.count(ids["sites/a"][:10]) == 1 and text.count(ids["sites/a~1"][:10]) == 3


def test_html_page_in_headless_chromium(env, tmp_path):
    cli, *_ = env
    page = tmp_path / "lineage.html"
    cli.ok("lineage", "main", "--html", page)
    html = page.read_text(encoding="utf-8")
    # One self-contained page: no URL to load anything from.
    assert "<script src" not in html and "<link" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    assert html.count('class="node') == 7
    assert cli.ok("lineage", "main", "--html", page).stdout and page.read_text(encoding="utf-8") == html

    with headless_chromium(tmp_path) as browser:
        from selenium.webdriver.common.by import By

        browser.get(page.as_uri())
        assert graph_shape(browser) == (7, 6)  # every node drawn at a real size
        panel = browser.find_element(By.ID, "panel")
        assert "Click a node" in panel.text
        ids = _ids(cli, "m2", "sites/d")
        browser.find_element(By.CSS_SELECTOR, f'g.node[data-id="{ids["m2"]}"]').click()
        assert panel.get_attribute("data-commit") == ids["m2"]
        text = panel.text
        assert "Merge " + ids["m2"][:10] in text and "round 2: c + d" in text
        assert '"strategy": "linear"' in text and '"lambda": 1.5' in text and "coordinator" in text
        browser.find_element(By.CSS_SELECTOR, f'g.node[data-id="{ids["sites/d"]}"]').click()
        text = panel.text
        assert "hospital-d" in text and "site d round 1" in text and "effective weight\n0.9" in text.replace(" 0.9", "\n0.9")
        shot = tmp_path / "lineage.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        # No script errors.
        assert not severe_errors(browser)
