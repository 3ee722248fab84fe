"""The repository end to end, through the real `mfgit` command, on real PEFT
adapters (a tiny Llama built from a config, and all-MiniLM-L6-v2).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mfgit.api.repository import Repository
from mfgit.objects import Commit
from tests.conftest import AUTHOR_EMAIL, AUTHOR_NAME, Cli, build_adapter

HEX64 = re.compile(r"^[0-9a-f]{64}$")


# --- helpers ------------------------------------------------------------------------------


def commit_json(cli, repo_dir: Path, adapter: Path, message: str, *extra: str) -> dict:
    return cli.json("commit", adapter, "-m", message, "--json", *extra, cwd=repo_dir)


def head_id(cli, repo_dir: Path, rev: str = "HEAD") -> str:
    return cli.json("show", rev, "--json", cwd=repo_dir)["id"]


def object_files(repo_dir: Path) -> list[Path]:
    root = repo_dir / ".mfgit" / "objects"
    return sorted(p for p in root.glob("??/*") if not p.name.startswith(".tmp-"))


def assert_same_tensors(a: Path, b: Path) -> None:
    ta = load_file(str(a / "adapter_model.safetensors"))
    tb = load_file(str(b / "adapter_model.safetensors"))
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype, k
        assert ta[k].shape == tb[k].shape, k
        assert torch.equal(ta[k], tb[k]), k


def normalised_config(adapter: Path) -> dict:
    """adapter_config.json with target_modules as a sorted list: PEFT writes
    them from a set, so their order carries no meaning."""
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    return cfg


def make_merge_commit(repo_dir: Path, first: str, second: str, branch: str = "main", message: str = "merge") -> str:
    """A commit with two parents, written through the Python API."""
    repo = Repository.open(repo_dir)
    c1 = repo.read_commit(first)
    commit = Commit(
        adapter=c1.adapter,
        parents=(first, second),
        author={"name": AUTHOR_NAME, "email": AUTHOR_EMAIL},
        site="coordinator",
        timestamp="2999-01-01T00:00:00.000000Z",  # newest of all
        message=message,
        provenance={"kind": "merge", "inputs": [{"commit": first}, {"commit": second}]},
    )
    cid = repo.put_commit(commit)
    ref = "refs/heads/" + branch
    repo.refs.update(ref, cid, repo.refs.read(ref), message="merge: test")
    return cid


class History(list):
    """The commit ids of `history`, oldest first; `.sources[i]` is commit i's adapter directory."""

    sources: list[Path]


@pytest.fixture(scope="module")
def _history_template(tmp_path_factory, adapter_store):
    root = tmp_path_factory.mktemp("history")
    cli = Cli(root / "home", root)
    cli.ok("init", root / "repo")
    ids, sources = History(), []
    for seed in (1, 2, 3):
        src = build_adapter(adapter_store, seed=seed)  # shared: never modify it
        ids.append(commit_json(cli, root / "repo", src, f"seed {seed}\n\nbody {seed}")["id"])
        sources.append(src)
    ids.sources = sources
    return root / "repo", ids


@pytest.fixture
def history(_history_template, repo_dir) -> History:
    """repo_dir holds main: c1 -> c2 -> c3 (adapter seeds 1, 2, 3); returns the ids, oldest first.

    Built once per module and copied (commits through the CLI are what cost).
    """
    template, ids = _history_template
    shutil.rmtree(repo_dir / ".mfgit")
    shutil.copytree(template / ".mfgit", repo_dir / ".mfgit")
    return ids


# --- init / commit ------------------------------------------------------------------------------


def test_init_creates_an_empty_repository(cli, tmp_path):
    res = cli.ok("init", "r")
    assert "Initialized empty mfgit repository in" in res.stdout
    cfg = (tmp_path / "r" / ".mfgit" / "config").read_text()
    assert "objectformat = sha256" in cfg and "formatversion = 2" in cfg
    status = cli.json("status", "--json", cwd=tmp_path / "r")
    assert status["branch"] == "main" and status["head"] is None and status["detached"] is False
    line = cli.fails("init", "r", code=4)
    assert "already exists" in line
    res = cli.ok("init", "--site", "hospital-b", "-b", "sites/hospital-b", "r2")
    status = cli.json("status", "--json", cwd=tmp_path / "r2")
    assert status["branch"] == "sites/hospital-b" and status["site"] == "hospital-b"


def test_commit_records_the_adapter_author_and_provenance(cli, repo_dir, adapter_dir):
    a = adapter_dir("a", seed=1)
    res = cli.ok("commit", a, "-m", "first adapter", cwd=repo_dir)
    assert re.fullmatch(r"\[main \(root-commit\) [0-9a-f]{10}\] first adapter\n", res.stdout)
    data = cli.json("show", "--json", cwd=repo_dir)
    c = data["commit"]
    assert HEX64.match(data["id"]) and res.stdout.split()[2].rstrip("]") == data["id"][:10]
    assert c["parents"] == []
    assert c["author"] == {"name": AUTHOR_NAME, "email": AUTHOR_EMAIL}
    assert c["message"] == "first adapter"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", c["timestamp"])
    prov = c["provenance"]
    assert prov["kind"] == "import"
    assert prov["source"] == {"name": "a", "format": "safetensors",
                              "files": ["README.md", "adapter_config.json", "adapter_model.safetensors"]}
    assert prov["base_model"] == {"name": "tiny-llama-test", "revision": None}
    assert {"mfgit", "python", "torch", "peft", "safetensors"} <= set(prov["tool"])
    summary = data["adapter"]
    assert summary["id"] == c["adapter"]
    assert summary["modules"] == 4 and summary["tensors"] == 8
    assert summary["dtypes"] == ["F32"] and summary["ranks"] == [8] and summary["r"] == 8
    assert summary["lora_alpha"] == 16 and summary["use_rslora"] is False
    assert sorted(summary["target_modules"]) == ["q_proj", "v_proj"]
    # 2 layers x (q_proj: A 8x64 + B 64x8, v_proj: A 8x64 + B 32x8) x 4 bytes
    assert summary["bytes"] == 2 * 4 * (8 * 64 + 64 * 8 + 8 * 64 + 32 * 8)


def test_recommitting_an_unchanged_adapter_is_refused_unless_allow_empty(cli, repo_dir, adapter_dir):
    a = adapter_dir("a", seed=1)
    first = commit_json(cli, repo_dir, a, "one")
    line = cli.fails("commit", a, "-m", "again", cwd=repo_dir, code=1)
    assert "nothing to commit" in line and "--allow-empty" in line
    second = commit_json(cli, repo_dir, a, "again", "--allow-empty")
    assert second["parents"] == [first["id"]]
    assert second["adapter"] == first["adapter"]


# --- log / show ------------------------------------------------------------------------------------


def test_log_json_lists_history_newest_first_with_decorations(cli, repo_dir, history):
    c1, c2, c3 = history
    cli.ok("tag", "v1", c1, cwd=repo_dir)
    log = cli.json("log", "--json", cwd=repo_dir)
    assert [c["id"] for c in log["commits"]] == [c3, c2, c1]
    top = log["commits"][0]
    assert top["refs"] == ["HEAD -> main"]
    assert top["parents"] == [c2] and top["message"] == "seed 3\n\nbody 3"
    assert top["author"]["name"] == AUTHOR_NAME and HEX64.match(top["adapter"])
    assert log["commits"][2]["refs"] == ["tag: v1"]
    assert [c["id"] for c in cli.json("log", "-n", "2", "--json", cwd=repo_dir)["commits"]] == [c3, c2]
    assert [c["id"] for c in cli.json("log", f"{c1}..HEAD", "--json", cwd=repo_dir)["commits"]] == [c3, c2]


def test_log_oneline_and_default_text(cli, repo_dir, history):
    c1, c2, c3 = history
    lines = cli.ok("log", "--oneline", cwd=repo_dir).stdout.splitlines()
    assert lines == [f"{c3[:10]} (HEAD -> main) seed 3", f"{c2[:10]} seed 2", f"{c1[:10]} seed 1"]
    text = cli.ok("log", "-n", "1", cwd=repo_dir).stdout
    assert text.startswith(f"commit {c3} (HEAD -> main)\n")
    assert f"Author: {AUTHOR_NAME} <{AUTHOR_EMAIL}>" in text
    assert "    seed 3\n    \n    body 3" in text
    assert c2 not in text


def test_log_graph_draws_lanes_for_a_merge(cli, repo_dir, history, adapter_dir):
    c1, c2, c3 = history
    cli.ok("switch", "-c", "sites/hospital-b", c1, cwd=repo_dir)
    side = commit_json(cli, repo_dir, adapter_dir("b", seed=7), "site b")["id"]
    cli.ok("switch", "main", cwd=repo_dir)
    merge = make_merge_commit(repo_dir, c3, side)
    graph = cli.ok("log", "--graph", "--oneline", cwd=repo_dir).stdout.splitlines()
    # The side lane opens at the merge and joins again above c1, the parent of both lanes.
    assert graph == [
        f"*  {merge[:10]} (HEAD -> main) merge",
        "| \\",
        f"| *  {side[:10]} (sites/hospital-b) site b",
        f"* |  {c3[:10]} seed 3",
        f"* |  {c2[:10]} seed 2",
        "| /",
        f"*  {c1[:10]} seed 1",
    ]
    full = cli.ok("log", "--graph", "-n", "2", cwd=repo_dir).stdout.splitlines()
    assert full[0].startswith(f"*  {merge[:10]}") and "[coordinator, 2999-01-01T00:00:00]" in full[0]
    assert len([ln for ln in full if "*" in ln]) == 2
    text = cli.ok("log", "-n", "1", cwd=repo_dir).stdout
    assert f"Merge: {c3[:10]} {side[:10]}" in text
    first_parent = cli.json("log", "--first-parent", "--json", cwd=repo_dir)["commits"]
    assert [c["id"] for c in first_parent] == [merge, c3, c2, c1]
    everything = cli.json("log", "--json", cwd=repo_dir)["commits"]
    assert sorted(c["id"] for c in everything) == sorted([merge, c3, c2, c1, side])


def test_show_text_has_the_commit_adapter_and_provenance(cli, repo_dir, history):
    text = cli.ok("show", cwd=repo_dir).stdout
    assert text.startswith(f"commit {history[2]}")
    assert "Adapter " in text and "base model   tiny-llama-test" in text
    assert "modules      4 (8 tensors" in text and "rank         8  alpha 16" in text
    assert "Provenance" in text and '"kind": "import"' in text


# --- branch / switch / checkout / tag -------------------------------------------------------------------


def test_branch_create_list_and_delete(cli, repo_dir, history, adapter_dir):
    c1, c2, c3 = history
    res = cli.ok("branch", "sites/hospital-a", cwd=repo_dir)
    assert res.stdout == f"Branch sites/hospital-a at {c3[:10]}\n"
    cli.ok("branch", "old", c1, cwd=repo_dir)
    data = cli.json("branch", "--json", cwd=repo_dir)
    assert data["current"] == "main" and data["remotes"] == []
    by_name = {b["name"]: b for b in data["branches"]}
    assert set(by_name) == {"main", "sites/hospital-a", "old"}
    assert by_name["main"] == {"name": "main", "ref": "refs/heads/main", "commit": c3, "current": True, "subject": "seed 3"}
    assert by_name["old"]["commit"] == c1 and by_name["old"]["current"] is False
    text = cli.ok("branch", cwd=repo_dir).stdout
    assert "* main" in text and "  old" in text
    assert "already exists" in cli.fails("branch", "old", cwd=repo_dir, code=4)
    cli.ok("branch", "-f", "old", c2, cwd=repo_dir)
    assert cli.json("show", "old", "--json", cwd=repo_dir)["id"] == c2

    # A branch with a commit that main does not have is not merged.
    cli.ok("switch", "-c", "feature", cwd=repo_dir)
    extra = commit_json(cli, repo_dir, adapter_dir("f", seed=9), "feature work")["id"]
    line = cli.fails("branch", "-d", "feature", cwd=repo_dir)
    assert "checked out" in line  # cannot delete the current branch
    cli.ok("switch", "main", cwd=repo_dir)
    line = cli.fails("branch", "-d", "feature", cwd=repo_dir, code=1)
    assert "not fully merged" in line and "branch -D" in line
    assert cli.json("show", "feature", "--json", cwd=repo_dir)["id"] == extra
    assert cli.ok("branch", "-D", "feature", cwd=repo_dir).stdout == f"Deleted branch feature (was {extra[:10]}).\n"
    # Merged branches go with -d.
    cli.ok("branch", "-d", "old", cwd=repo_dir)
    names = {b["name"] for b in cli.json("branch", "--json", cwd=repo_dir)["branches"]}
    assert names == {"main", "sites/hospital-a"}
    assert "does not exist" in cli.fails("branch", "-d", "nope", cwd=repo_dir, code=4)


def test_switch_create_and_orphan(cli, repo_dir, history, adapter_dir):
    c1, c2, c3 = history
    assert cli.ok("switch", "-c", "sites/a", c2, cwd=repo_dir).stdout == "Switched to a new branch 'sites/a'\n"
    st = cli.json("status", "--json", cwd=repo_dir)
    assert st["branch"] == "sites/a" and st["head"] == c2
    on_a = commit_json(cli, repo_dir, adapter_dir("x", seed=11), "on a")
    assert on_a["parents"] == [c2]
    assert cli.json("show", "main", "--json", cwd=repo_dir)["id"] == c3  # main did not move

    cli.ok("switch", "--orphan", "fresh", cwd=repo_dir)
    st = cli.json("status", "--json", cwd=repo_dir)
    assert st["branch"] == "fresh" and st["head"] is None and st["adapter"] is None
    assert "no commits yet" in cli.fails("log", cwd=repo_dir, code=4)
    root = commit_json(cli, repo_dir, adapter_dir("y", seed=12), "new root")
    assert root["parents"] == []
    assert cli.ok("switch", "main", cwd=repo_dir).stdout == "Switched to branch 'main'\n"
    assert "does not exist" in cli.fails("switch", "nope", cwd=repo_dir, code=4)
    assert "already exists" in cli.fails("switch", "--orphan", "main", cwd=repo_dir, code=4)


def test_checkout_writes_the_adapter_of_any_revision(cli, repo_dir, history, tmp_path):
    c1, c2, c3 = history
    out = tmp_path / "out1"
    res = cli.ok("checkout", c1[:12], "--to", out, cwd=repo_dir)
    assert res.stdout == f"Wrote {out}\n"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert_same_tensors(out, history.sources[0])
    assert (out / "README.md").read_bytes() == (history.sources[0] / "README.md").read_bytes()
    # Relative --to is relative to the working directory.
    cli.ok("checkout", "HEAD~1", "--to", "rel", cwd=repo_dir)
    assert_same_tensors(repo_dir / "rel", history.sources[1])


def test_tags_lightweight_and_annotated(cli, repo_dir, history):
    c1, c2, c3 = history
    assert cli.ok("tag", "v1", c1, cwd=repo_dir).stdout == ""
    cli.ok("tag", "v2", "-m", "release for review\n\ndetails", cwd=repo_dir)
    tags = {t["name"]: t for t in cli.json("tag", "--json", cwd=repo_dir)["tags"]}
    assert tags["v1"] == {"name": "v1", "ref": "refs/tags/v1", "object": c1, "commit": c1}
    assert tags["v2"]["commit"] == c3 and tags["v2"]["object"] != c3 and HEX64.match(tags["v2"]["object"])
    assert cli.ok("tag", cwd=repo_dir).stdout == "v1\nv2\n"
    assert head_id(cli, repo_dir, "v2") == c3 and head_id(cli, repo_dir, "v1") == c1
    assert head_id(cli, repo_dir, tags["v2"]["object"]) == c3  # the tag object peels to its commit
    # The annotated tag is an object recording tagger and message.
    repo = Repository.open(repo_dir)
    tag = repo.read_object(tags["v2"]["object"])
    assert tag.name == "v2" and tag.target == c3 and tag.message == "release for review\n\ndetails"
    assert tag.tagger == {"name": AUTHOR_NAME, "email": AUTHOR_EMAIL}
    assert "already exists" in cli.fails("tag", "v1", cwd=repo_dir, code=4)
    cli.ok("tag", "-f", "v1", c2, cwd=repo_dir)
    assert head_id(cli, repo_dir, "v1") == c2
    decorated = cli.json("log", "--json", cwd=repo_dir)["commits"]
    assert decorated[0]["refs"] == ["HEAD -> main", "tag: v2"]


def test_status_json(cli, repo_dir, adapter_dir):
    s1, s2 = adapter_dir("s1", seed=1), adapter_dir("s2", seed=2)
    cli.ok("commit", s1, "-m", "one", cwd=repo_dir)
    head = commit_json(cli, repo_dir, s2, "two\n\nbody")["id"]
    st = cli.json("status", "--json", cwd=repo_dir)
    assert st["branch"] == "main" and st["detached"] is False and st["bare"] is False
    assert st["head"] == head and st["subject"] == "two"
    assert st["adapter"]["modules"] == 4 and st["adapter"]["base_model"]["name"] == "tiny-llama-test"
    sources = {s["path"]: s for s in st["sources"]}
    assert set(sources) == {str(s1.resolve()), str(s2.resolve())}
    assert sources[str(s2.resolve())]["state"] == "unchanged"
    assert sources[str(s2.resolve())]["adapter"] == st["adapter"]["id"]
    assert sources[str(s1.resolve())]["state"] == "committed elsewhere"
    # Changing a committed directory shows up; so does removing it.
    shutil.copy(s1 / "adapter_model.safetensors", s2)
    shutil.rmtree(s1)
    st = cli.json("status", "--json", cwd=repo_dir)
    assert {s["path"]: s["state"] for s in st["sources"]} == {str(s1.resolve()): "missing", str(s2.resolve()): "modified"}
    text = cli.ok("status", cwd=repo_dir).stdout
    assert text.startswith("On branch main\n") and f"HEAD {head[:10]} two" in text


def test_fsck_and_gc_on_a_healthy_repository(cli, repo_dir, history):
    report = cli.json("fsck", "--json", cwd=repo_dir)
    assert report["ok"] is True and report["read_data"] is False
    assert report["objects_checked"] == len(object_files(repo_dir))
    assert report["corrupt"] == [] and report["missing"] == [] and report["bad_refs"] == []
    assert report["dangling"] == [] and report["stale_locks"] == []
    full = cli.json("fsck", "--read-data", "--json", cwd=repo_dir)
    assert full["ok"] is True and full["read_data"] is True
    assert cli.ok("fsck", cwd=repo_dir).stdout.endswith(": ok\n")
    gc = cli.json("gc", "--prune=now", "--json", cwd=repo_dir)
    assert gc["deleted"] == 0 and gc["deleted_ids"] == [] and gc["bytes_freed"] == 0
    assert gc["reachable"] == len(object_files(repo_dir)) and gc["dry_run"] is False
    assert "Deleted 0 unreachable object(s)" in cli.ok("gc", cwd=repo_dir).stdout


# --- revisions -------------------------------------------------------------------------------------------


def test_revisions_resolve_like_git(cli, repo_dir, history, adapter_dir):
    c1, c2, c3 = history
    cli.ok("tag", "v1", c2, cwd=repo_dir)
    cli.ok("tag", "-m", "annotated", "v2", c3, cwd=repo_dir)
    cli.ok("branch", "sites/hospital-a", c1, cwd=repo_dir)
    cases = {
        c3: c3, c2[:10]: c2, c1[:6]: c1, "main": c3, "refs/heads/main": c3, "HEAD": c3, "@": c3,
        "HEAD~1": c2, "HEAD~2": c1, "HEAD^": c2, "HEAD^^": c1, "HEAD~0": c3, "HEAD^0": c3,
        "v1": c2, "v1~1": c1, "v2": c3, "v2^": c2, "refs/tags/v1": c2,
        "sites/hospital-a": c1, f"{c3[:8]}~2": c1,
    }
    for rev, want in cases.items():
        assert head_id(cli, repo_dir, rev) == want, rev


def test_second_parent_of_a_merge(cli, repo_dir, history, adapter_dir):
    c1, c2, c3 = history
    cli.ok("switch", "-c", "side", c1, cwd=repo_dir)
    side = commit_json(cli, repo_dir, adapter_dir("b", seed=7), "side")["id"]
    cli.ok("switch", "main", cwd=repo_dir)
    merge = make_merge_commit(repo_dir, c3, side)
    assert head_id(cli, repo_dir, "HEAD") == merge
    assert head_id(cli, repo_dir, "HEAD^1") == c3
    assert head_id(cli, repo_dir, "HEAD^2") == side
    assert head_id(cli, repo_dir, "HEAD^2~1") == c1
    assert head_id(cli, repo_dir, "HEAD~1") == c3
    line = cli.fails("show", "HEAD^3", cwd=repo_dir, code=4)
    assert "HEAD^3" in line and "2 parent(s)" in line


def test_unknown_revisions_give_one_line(cli, repo_dir, history):
    for rev in ("nope", "HEAD~3", "main~9", "0000000", "HEAD~x", "HEAD@{1}"):
        line = cli.fails("show", rev, cwd=repo_dir, code=4)
        assert f"unknown revision {rev!r}" in line, line
    line = cli.fails("checkout", "nope", "--to", "out", cwd=repo_dir, code=4)
    assert "unknown revision 'nope'" in line
    assert not (repo_dir / "out").exists()
    # An id of an object that is not a commit.
    adapter = cli.json("show", "--json", cwd=repo_dir)["adapter"]["id"]
    assert "not a commit" in cli.fails("show", adapter, cwd=repo_dir, code=4)


def test_ambiguous_short_id_is_refused_clearly(cli, repo_dir, history):
    repo = Repository.open(repo_dir)
    seen: dict[str, Commit] = {}
    base = repo.read_commit(history[0])
    for i in range(100_000):
        c = Commit(adapter=base.adapter, parents=(), author=base.author, site=None,
                   timestamp=base.timestamp, message=f"probe {i}", provenance={"kind": "import"})
        prefix = c.id[:4]
        if prefix in seen:
            twin = seen[prefix]
            break
        seen[prefix] = c
    a, b = repo.put_commit(twin), repo.put_commit(c)
    common = os.path.commonprefix([a, b])
    line = cli.fails("show", common, cwd=repo_dir, code=4)
    assert "ambiguous" in line and a[:12] in line and b[:12] in line and "more digits" in line
    assert head_id(cli, repo_dir, a[: len(common) + 1]) == a
    assert head_id(cli, repo_dir, b[: len(common) + 1]) == b


# --- round trips through PEFT ------------------------------------------------------------------------------

ROUND_TRIPS = {
    "f32": dict(seed=21),
    "bf16": dict(seed=22, dtype=torch.bfloat16),
    "rslora-patterns": dict(seed=23, r=8, lora_alpha=16, use_rslora=True, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
                            rank_pattern={"model.layers.0.self_attn.q_proj": 4, "o_proj": 2},
                            alpha_pattern={"v_proj": 32, "model.layers.1.self_attn.k_proj": 3}),
    "minilm": dict(kind="minilm", seed=24),
}


def _outputs(model, kind: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if kind == "minilm":
        ids = torch.randint(100, 30000, (2, 12), generator=gen)
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    ids = torch.randint(0, 128, (2, 10), generator=gen)
    return model(input_ids=ids).logits


@pytest.mark.parametrize("case", list(ROUND_TRIPS))
def test_checkout_round_trips_through_peft_bit_exactly(cli, repo_dir, adapter_dir, tmp_path, case):
    import warnings

    from peft import PeftModel

    from tests.adapters import minilm_model, tiny_llama

    kw = dict(ROUND_TRIPS[case])
    kind = kw.get("kind", "llama")
    src = adapter_dir("src", **kw)
    commit_json(cli, repo_dir, src, f"round trip {case}")
    out = tmp_path / "out"
    cli.ok("checkout", "HEAD", "--to", out, cwd=repo_dir)
    assert_same_tensors(src, out)
    assert normalised_config(out) == normalised_config(src)

    def base():
        return minilm_model() if kind == "minilm" else tiny_llama()

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        original = PeftModel.from_pretrained(base(), str(src)).eval()
        restored = PeftModel.from_pretrained(base(), str(out)).eval()
        plain = base()
        sd_o = {k: v for k, v in original.state_dict().items() if "lora_" in k}
        sd_r = {k: v for k, v in restored.state_dict().items() if "lora_" in k}
        assert sd_o and sorted(sd_o) == sorted(sd_r)
        for k in sd_o:
            assert torch.equal(sd_o[k], sd_r[k]), k
        y_o, y_r, y_base = _outputs(original, kind), _outputs(restored, kind), _outputs(plain, kind)
    assert torch.equal(y_o, y_r)
    assert not torch.equal(y_o, y_base)  # the adapter does change the model
    if case == "rslora-patterns":
        cfg = cli.json("show", "--json", cwd=repo_dir)["adapter"]
        assert cfg["use_rslora"] is True and cfg["ranks"] == [2, 4, 8]


def test_python_api_load_adapter_matches_checkout(repo_dir, adapter_dir, cli):
    import warnings

    from tests.adapters import tiny_llama

    src = adapter_dir("src", seed=31)
    commit_json(cli, repo_dir, src, "api")
    repo = Repository.open(repo_dir)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        from peft import PeftModel

        model = repo.load_adapter(tiny_llama(), "HEAD")
        ref = PeftModel.from_pretrained(tiny_llama(), str(src))
        assert torch.equal(_outputs(model, "llama"), _outputs(ref, "llama"))


# --- deduplication --------------------------------------------------------------------------------------------


def test_identical_tensors_are_stored_once_across_commits_and_branches(cli, repo_dir, adapter_dir, tmp_path):
    a = adapter_dir("a", seed=41)
    commit_json(cli, repo_dir, a, "a")
    n0 = len(object_files(repo_dir))
    assert n0 == 8 + 1 + 1 + 1  # 8 tensors, README blob (the card attachment), adapter, commit

    # The same adapter on another branch: only a commit.
    cli.ok("switch", "-c", "sites/b", cwd=repo_dir)
    commit_json(cli, repo_dir, a, "same again", "--allow-empty")
    assert len(object_files(repo_dir)) == n0 + 1

    # Same tensors, another README: a blob and a commit (the card is an attachment, the adapter is the same).
    b = tmp_path / "adapters" / "b"
    shutil.copytree(a, b)
    (b / "README.md").write_text("another model card\n")
    commit_json(cli, repo_dir, b, "new card")
    assert len(object_files(repo_dir)) == n0 + 3

    # One tensor changed: one tensor, an adapter, a commit.
    c = tmp_path / "adapters" / "c"
    shutil.copytree(b, c)
    tensors = load_file(str(c / "adapter_model.safetensors"))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] + 1.0
    save_file(tensors, str(c / "adapter_model.safetensors"), metadata={"format": "pt"})
    cli.ok("switch", "main", cwd=repo_dir)
    commit_json(cli, repo_dir, c, "one tensor changed")
    assert len(object_files(repo_dir)) == n0 + 6
    assert cli.json("fsck", "--read-data", "--json", cwd=repo_dir)["ok"] is True


# --- the stat cache ---------------------------------------------------------------------------------------------


class _ReaderSpy:
    """Stands in for read_header, the commit's way into the tensor data: counts uses, or refuses them."""

    def __init__(self, real, refuse: bool):
        self.real, self.refuse, self.opened = real, refuse, []

    def __call__(self, path, *a, **k):
        self.opened.append(str(path))
        if self.refuse:
            raise AssertionError(f"the tensors of {path} were read again")
        return self.real(path, *a, **k)


def test_recommit_of_an_unchanged_adapter_reads_no_tensor(repo_dir, adapter_dir, monkeypatch, cli):
    import mfgit.formats.safetensors as stmod

    src = adapter_dir("a", seed=51)
    repo = Repository.open(repo_dir)
    spy = _ReaderSpy(stmod.read_header, refuse=False)
    monkeypatch.setattr(stmod, "read_header", spy)
    first = repo.commit(src, "first")
    assert len(spy.opened) == 1  # the first commit does read the tensors
    # From now on, any read of the tensors fails the commit.
    spy.refuse = True
    again = repo.commit(src, "again", allow_empty=True)
    assert again.commit.adapter == first.commit.adapter
    assert again.commit.parents == (first.id,)
    assert len(spy.opened) == 1
    spy.opened.clear()
    # A fresh process (the CLI) uses the same cache.
    cli.ok("commit", src, "-m", "cli", "--allow-empty", cwd=repo_dir)

    # Touching the file (same bytes, new mtime) invalidates the entry: it is read again.
    w = src / "adapter_model.safetensors"
    st = w.stat()
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(AssertionError, match="read again"):
        repo.commit(src, "touched", allow_empty=True)
    spy.refuse = False
    spy.opened.clear()
    touched = repo.commit(src, "touched", allow_empty=True)
    assert spy.opened == [str(w)]
    assert touched.commit.adapter == first.commit.adapter  # same bytes, same adapter

    # Changed content (same shapes and size) is committed as a new adapter.
    other = adapter_dir("b", seed=52)
    shutil.copy(other / "adapter_model.safetensors", w)
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime back
    changed = repo.commit(src, "changed")
    assert changed.commit.adapter != first.commit.adapter
    assert_same_tensors_in_repo(repo, changed.commit.adapter, other)


def assert_same_tensors_in_repo(repo: Repository, adapter_id: str, directory: Path) -> None:
    adapter = repo.read_adapter(adapter_id)
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    assert sorted(adapter.tensors) == sorted(tensors)
    for name, t in tensors.items():
        assert torch.equal(repo.load_tensor(adapter.tensors[name]["id"]), t), name


def test_a_file_replaced_during_a_commit_is_not_cached_under_the_old_content(repo_dir, adapter_dir, monkeypatch):
    # The training job saves a new checkpoint while mfgit reads the old one.
    src = adapter_dir("a", seed=53)
    newer = adapter_dir("b", seed=54)
    w = src / "adapter_model.safetensors"
    repo = Repository.open(repo_dir)
    real_put = repo.store.put_tensor
    state = {"done": False}

    def put_and_replace(*a, **k):
        if not state["done"]:
            state["done"] = True
            tmp = w.with_suffix(".partial")
            shutil.copy(newer / "adapter_model.safetensors", tmp)
            os.replace(tmp, w)
            old = w.stat().st_mtime_ns - 30_000_000_000
            os.utime(w, ns=(old, old))
        return real_put(*a, **k)

    monkeypatch.setattr(repo.store, "put_tensor", put_and_replace)
    first = repo.commit(src, "read while replaced")
    monkeypatch.undo()
    assert state["done"]
    second = repo.commit(src, "after the replacement")
    assert second.commit.adapter != first.commit.adapter
    assert_same_tensors_in_repo(repo, second.commit.adapter, newer)


# --- identity -----------------------------------------------------------------------------------------------


def test_identity_and_site_from_config_end_up_in_the_commit(cli, repo_dir, adapter_dir):
    cli = cli.with_env(MFGIT_AUTHOR_NAME=None, MFGIT_AUTHOR_EMAIL=None)
    cli.ok("config", "user.name", "Dr. Ada Lovelace", cwd=repo_dir)
    cli.ok("config", "user.email", "ada@hospital-a.example", cwd=repo_dir)
    cli.ok("config", "site", "hospital-a", cwd=repo_dir)
    assert cli.ok("config", "user.site", cwd=repo_dir).stdout == "hospital-a\n"
    c = commit_json(cli, repo_dir, adapter_dir("a", seed=61), "from site a")
    assert c["author"] == {"name": "Dr. Ada Lovelace", "email": "ada@hospital-a.example"}
    assert c["site"] == "hospital-a"
    text = cli.ok("log", cwd=repo_dir).stdout
    assert "Author: Dr. Ada Lovelace <ada@hospital-a.example>" in text and "Site:   hospital-a" in text
    listing = cli.ok("config", "--list", cwd=repo_dir).stdout
    assert "user.name=Dr. Ada Lovelace" in listing and "user.site=hospital-a" in listing


def test_global_identity_is_used_when_the_repository_has_none(cli, repo_dir, adapter_dir):
    anon = cli.with_env(MFGIT_AUTHOR_NAME=None, MFGIT_AUTHOR_EMAIL=None)
    anon.ok("config", "--global", "user.name", "Global Name")
    anon.ok("config", "--global", "user.email", "global@example.org")
    c = anon.json("commit", adapter_dir("a", seed=62), "-m", "g", "--json", cwd=repo_dir)
    assert c["author"] == {"name": "Global Name", "email": "global@example.org"}


def test_missing_identity_is_one_line_naming_the_fix(cli, repo_dir, adapter_dir):
    anon = cli.with_env(MFGIT_AUTHOR_NAME=None, MFGIT_AUTHOR_EMAIL=None)
    src = adapter_dir("a", seed=63)
    line = anon.fails("commit", src, "-m", "who?", cwd=repo_dir, code=4)
    assert "user.name" in line and 'mfgit config user.name "Your Name"' in line and "user.email" in line
    anon.ok("config", "user.name", "Only Name", cwd=repo_dir)
    line = anon.fails("commit", src, "-m", "who?", cwd=repo_dir, code=4)
    assert "user.email" in line
    assert "no commits yet" in anon.fails("log", cwd=repo_dir)  # nothing was committed


# --- provenance -----------------------------------------------------------------------------------------------


@pytest.fixture
def code_tree(tmp_path):
    """A real git work tree with one commit and a remote URL with credentials."""
    import git

    root = tmp_path / "code"
    repo = git.Repo.init(root)
    (root / "train.py").write_text("print('train')\n")
    repo.index.add(["train.py"])
    actor = git.Actor("Trainer", "trainer@example.org")
    repo.index.commit("training code", author=actor, committer=actor)
    repo.create_remote("origin", "https://user:secret@example.org/x.git")
    yield root, repo, actor
    repo.close()


def test_provenance_records_the_code_revision_without_credentials(cli, repo_dir, adapter_dir, code_tree):
    root, git_repo, actor = code_tree
    inside = root / "outputs" / "adapter"
    shutil.copytree(adapter_dir("a", seed=71), inside)
    c = commit_json(cli, repo_dir, inside, "trained", "--meta", "dataset=breakhis-v2", "--meta", "samples=1200",
                    "--meta", "lr=0.0002", "--meta", "augment=true")
    code = c["provenance"]["code"]
    assert code == {
        "commit": git_repo.head.commit.hexsha,
        "branch": git_repo.active_branch.name,
        "remote_url": "https://example.org/x.git",
        "dirty": True,  # the adapter itself is untracked
    }
    meta = c["provenance"]["meta"]
    assert meta == {"dataset": "breakhis-v2", "samples": 1200, "lr": 0.0002, "augment": True}
    assert type(meta["samples"]) is int
    for cmd in (["show", "--json"], ["log", "--json"], ["show"]):
        assert "secret" not in cli.ok(*cmd, cwd=repo_dir).stdout
    for f in object_files(repo_dir):
        assert b"secret" not in f.read_bytes()

    # Commit the outputs too: the tree is clean.
    git_repo.index.add([str(p.relative_to(root)) for p in inside.iterdir()])
    git_repo.index.commit("add adapter", author=actor, committer=actor)
    c2 = commit_json(cli, repo_dir, inside, "clean", "--allow-empty")
    assert c2["provenance"]["code"]["dirty"] is False
    assert c2["provenance"]["code"]["commit"] == git_repo.head.commit.hexsha != code["commit"]


def test_code_option_names_another_work_tree(cli, repo_dir, adapter_dir, code_tree, tmp_path):
    root, git_repo, _ = code_tree
    outside = adapter_dir("a", seed=72)
    c = commit_json(cli, repo_dir, outside, "no code")
    assert c["provenance"]["code"] is None
    c = commit_json(cli, repo_dir, outside, "with code", "--code", root, "--allow-empty")
    assert c["provenance"]["code"]["commit"] == git_repo.head.commit.hexsha
    assert c["provenance"]["code"]["dirty"] is False
    (tmp_path / "not-git").mkdir()
    line = cli.fails("commit", outside, "-m", "x", "--code", tmp_path / "not-git", "--allow-empty", cwd=repo_dir, code=4)
    assert "--code names no git work tree" in line
    # The same error when the code revision is read while new tensors are
    # being imported (on a thread of its own): one line, and no commit.
    before = head_id(cli, repo_dir)
    line = cli.fails("commit", adapter_dir("b", seed=74), "-m", "x", "--code", tmp_path / "not-git",
                     cwd=repo_dir, code=4)
    assert "--code names no git work tree" in line
    assert head_id(cli, repo_dir) == before


def test_meta_must_be_key_value(cli, repo_dir, adapter_dir):
    line = cli.fails("commit", adapter_dir("a", seed=73), "-m", "x", "--meta", "novalue", cwd=repo_dir, code=4)
    assert "key=value" in line


# --- JSON output ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["log", "--json"], ["log", "--graph", "--json"], ["show", "--json"], ["show", "v1", "--json"],
        ["branch", "--json"], ["branch", "-a", "--json"], ["tag", "--json"], ["status", "--json"],
        ["fsck", "--json"], ["fsck", "--read-data", "--json"], ["gc", "--json"], ["gc", "--dry-run", "--prune=now", "--json"],
        ["commit", "ADAPTER", "-m", "j", "--allow-empty", "--json"],
    ],
    ids=lambda a: " ".join(a),
)
def test_every_json_output_is_one_document(cli, repo_dir, adapter_dir, args):
    src = adapter_dir("a", seed=81)
    cli.ok("commit", src, "-m", "one", cwd=repo_dir)
    cli.ok("tag", "-m", "t", "v1", cwd=repo_dir)
    args = [str(src) if a == "ADAPTER" else a for a in args]
    out = cli.ok(*args, cwd=repo_dir).stdout
    value = json.loads(out)  # the whole stdout, nothing before or after
    assert isinstance(value, dict) and value


def test_checkout_files_get_the_same_permissions_under_the_umask(repo_dir, adapter_dir, tmp_path):
    repo = Repository.open(repo_dir)
    repo.commit(adapter_dir("perm", seed=75), message="perm")
    old = os.umask(0o002)
    try:
        out = repo.checkout("HEAD", to=tmp_path / "out")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["adapter_model.safetensors"] == modes["adapter_config.json"] == 0o664, modes
    assert set(modes.values()) == {0o664}  # and any other file of the adapter (a README)


def test_parallel_work_stops_starting_tensors_after_an_error():
    import threading
    import time

    from mfgit.parallel import parallel_map as _parallel_map

    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        if i == 0:
            time.sleep(0.3)  # a big tensor still being processed
        if i == 1:
            raise ValueError("bad tensor")
        return i

    with pytest.raises(ValueError, match="bad tensor"):
        _parallel_map(work, range(200))
    assert len(started) < 10  # not the 198 others
    assert _parallel_map(lambda i: i * i, range(50)) == [i * i for i in range(50)]


def test_dash_c_makes_every_relative_path_relative_to_its_folder(cli, repo_dir, adapter_dir, tmp_path):
    # `mfgit -C PATH ...` runs as if started in PATH: the adapter, --code and
    # --to given relative to PATH, from anywhere else.
    import git

    src = adapter_dir("dash-c", seed=76)
    shutil.copytree(src, repo_dir / "runs" / "epoch1")
    code = repo_dir / "code"
    git.Repo.init(code).close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    c = cli.json("-C", repo_dir, "commit", "runs/epoch1", "-m", "relative", "--code", "code", "--json", cwd=elsewhere)
    assert c["provenance"]["source"]["name"] == "epoch1"
    assert c["provenance"]["code"] is not None
    cli.ok("-C", repo_dir, "checkout", "HEAD", "--to", "out", cwd=elsewhere)
    assert_same_tensors(repo_dir / "out", src)
    assert not (elsewhere / "out").exists()
