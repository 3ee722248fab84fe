"""gc running at the same time as commits that reuse old unreachable objects loses nothing.

The bugs: a commit re-committing an old checkpoint (its branch deleted, its
objects unreachable) reused the objects without freshening them, so a
default gc (two weeks' grace, objects back-dated) deleted them under it; and
`gc --prune=now` deleted what a running commit had just referenced, and
unlinked its temporary files. Both exited 0 and left the branch at a
damaged commit.

Every round races a real `mfgit gc` process against a real `mfgit commit`
process, started in either order with a random offset, and then checks
that the commit exited 0, the branch is at it, every earlier commit is
still there, and fsck finds no damage. Half the commits re-commit the old
checkpoint's directory (the stat cache answers: the adapter and its
tensors are reused), half commit a new adapter sharing its tensors (the
import reuses some tensors and writes new ones in a batch).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from mfgit.api.repository import Repository
from tests.conftest import Cli

ROUNDS = 50  # per variant: 100 races in all
MODULES = 20  # per old checkpoint: 40 tensors, so that gc has deleting to do


def tiny_adapter(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["proj"], "base_model_name_or_path": "tiny"}))
    past = time.time() - 10  # older than the stat cache's racy window
    for f in path.iterdir():
        os.utime(f, (past, past))
    return path


def lora_tensors(rng: np.random.Generator, modules: int, first: int = 0) -> dict[str, np.ndarray]:
    out = {}
    for m in range(first, first + modules):
        name = f"base_model.model.layers.{m}.proj"
        out[f"{name}.lora_A.weight"] = rng.standard_normal((2, 16)).astype(np.float32)
        out[f"{name}.lora_B.weight"] = rng.standard_normal((16, 2)).astype(np.float32)
    return out


def old_checkpoints(repo_dir: Path, work: Path, rng: np.random.Generator, *, age: float) -> list[tuple[Path, Path]]:
    """For each round, an adapter committed on its own branch `old-I`, its objects aged by `age` seconds.

    Deleting the branch (and with it its reflog) leaves its objects old and
    unreachable. Returns, per round, the adapter's directory (re-committing
    it is answered by the stat cache) and a new adapter that shares its
    tensors and adds new ones. Set up in-process, before any race.
    """
    repo = Repository.open(repo_dir)
    main = repo.head_branch()
    out = []
    for i in range(ROUNDS):
        tensors = lora_tensors(rng, MODULES)
        old = tiny_adapter(work / f"old-{i}", tensors)
        new = tiny_adapter(work / f"new-{i}", {**tensors, **lora_tensors(rng, 3, first=MODULES)})
        repo.switch(f"old-{i}", orphan=True)
        info = repo.commit(old, f"old checkpoint {i}")
        if age:
            past = time.time() - age
            adapter = repo.read_adapter(info.commit.adapter)
            for oid in [info.id, info.commit.adapter, *adapter.referenced_ids()]:
                os.utime(repo_dir / ".mfgit" / "objects" / oid[:2] / oid[2:], (past, past))
        out.append((old, new))
    repo.switch(main)
    # A Python process that wrote holds the writer lock until it closes the store.
    repo.store.close()
    return out


def race(cli: Cli, repo_dir: Path, gc_args: list[str], src: Path, rng: random.Random) -> tuple[dict, str]:
    gc_first = rng.random() < 0.5
    offset = rng.uniform(0.0, 0.1)
    procs = {}
    for who in (["gc", "commit"] if gc_first else ["commit", "gc"]):
        args = ["gc", *gc_args] if who == "gc" else ["commit", src, "-m", f"commit of {src.name}", "--json"]
        procs[who] = cli.popen(*args, cwd=repo_dir)
        if len(procs) == 1:
            time.sleep(offset)
    out = {who: p.communicate(timeout=120) for who, p in procs.items()}
    for who, p in procs.items():
        assert p.returncode == 0, (who, out[who][1])
    return json.loads(out["commit"][0]), f"{'gc' if gc_first else 'commit'} first, +{offset:.3f} s"


@pytest.mark.parametrize("gc_args, age", [(["--prune=now"], 0.0), ([], 30 * 86400.0)],
                         ids=["prune-now", "default-grace-backdated"])
def test_gc_concurrent_with_commits_reusing_old_unreachable_objects_loses_no_commit(cli, repo_dir, tmp_path,
                                                                                      gc_args, age):
    rng = np.random.default_rng(7)
    order = random.Random(11)
    first = tiny_adapter(tmp_path / "first", lora_tensors(rng, 2))
    cli.ok("commit", first, "-m", "first", cwd=repo_dir)
    made = [Repository.open(repo_dir).head()]
    checkpoints = old_checkpoints(repo_dir, tmp_path / "adapters", rng, age=age)
    for i, (old, new) in enumerate(checkpoints):
        Repository.open(repo_dir).delete_branch(f"old-{i}", force=True)
        src = old if i % 2 == 0 else new
        commit, when = race(cli, repo_dir, gc_args, src, order)
        repo = Repository.open(repo_dir)
        where = f"round {i} ({src.name}, {when})"
        assert repo.head() == commit["id"] and commit["parents"] == [made[-1]], where
        made.append(commit["id"])
        report = repo.fsck()
        assert report["ok"] and report["missing"] == [] and report["corrupt"] == [], (where, report)
        # No commit lost: the branch holds every one made so far, each with its whole adapter.
        assert [c.id for c in repo.log("HEAD")] == made[::-1], where
        for oid in repo.read_adapter(repo.read_commit(commit["id"]).adapter).referenced_ids():
            assert repo.store.has(oid), (where, oid)
    assert Repository.open(repo_dir).fsck(read_data=True)["ok"]
