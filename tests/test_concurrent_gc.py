"""gc running at the same time as commits that reuse old unreachable objects loses nothing.

The bugs: a commit re-committing an old checkpoint (its branch deleted, its
objects unreachable) reused the objects without freshening them, so a
default gc (two weeks' grace, objects back-dated) deleted them under it; and
`gc --prune=now` deleted what a running commit had just referenced, and
unlinked its temporary files. Both exited 0 and left the branch at a
damaged commit.

Every round races a gc against a commit, each in its own process, started
in either order with a random offset: from just before the gc starts to just
after it usually ends — before gc takes its lock, while it holds it, after it
let go. So that a round costs no process start, both run in long-running
Python processes that serve one request at a time through the API, opening
the repository and closing its store as one `mfgit` command does; every
tenth gc is the real `mfgit gc` command. Each round then checks that both
succeeded, the branch is at the new commit and holds every earlier one, the
new commit's adapter is whole, and (every few rounds, and at the end reading
every byte) fsck finds no damage; and at the end, that the two really ran at
the same time in a good share of the rounds. Half the commits re-commit the
old checkpoint's directory (the stat cache answers: the adapter and its
tensors are reused), half commit a new adapter sharing its tensors (the
import reuses some tensors and writes new ones in a batch).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors.numpy import save_file

from mfgit.api.repository import Repository
from mfgit.formats.peft import inspect_adapter_dir
from mfgit.repo.importer import import_adapter
from tests.conftest import Cli, isolated_env

ROUNDS = 100  # per variant: 200 races in all
MODULES = 8  # per old checkpoint: 16 tensors, so that gc has deleting to do
FSCK_EVERY = 25  # rounds between full fsck runs (the new commit's objects are checked every round)

# The racing processes: each reads one JSON request a line (["commit", source
# directory, message] or ["gc", grace period in seconds]) and answers one JSON
# line: the result, and when it started and ended on the machine's monotonic
# clock, which all processes share. Each request opens the repository and
# closes its store at the end, as one `mfgit` command does, so the writer
# lock ends with the request.
WORKER = r"""
import json, sys, time
from mfgit.api.repository import Repository
from mfgit.formats.peft import inspect_adapter_dir
from mfgit.repo.importer import import_adapter
repo_dir = sys.argv[1]
print("ready", flush=True)
for line in sys.stdin:
    verb, *args = json.loads(line)
    t0 = time.monotonic()
    repo = Repository.open(repo_dir)
    try:
        if verb == "commit":
            info = repo.commit(args[0], args[1])
            out = {"id": info.id, "parents": list(info.commit.parents)}
        else:
            out = {"deleted": repo.gc(prune_older_than=args[0])["deleted"]}
    except Exception as e:  # reported to the test, which fails the round
        out = {"error": f"{type(e).__name__}: {e}"}
    finally:
        repo.store.close()
    out.update(t0=t0, t1=time.monotonic())
    print(json.dumps(out), flush=True)
"""


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
        out[f"{name}.lora_A.weight"] = rng.standard_normal((2, 8)).astype(np.float32)
        out[f"{name}.lora_B.weight"] = rng.standard_normal((8, 2)).astype(np.float32)
    return out


def old_checkpoints(repo_dir: Path, work: Path, rng: np.random.Generator) -> list[tuple[Path, Path, list[str]]]:
    """For each round, an adapter imported as a commit imports it, and named by nothing.

    What a deleted branch leaves: its adapter and tensors, unreachable, and
    the stat cache entry that answers a commit of the same directory. (The
    commit object itself would be one more unreachable object; it is not
    made.) Returns, per round, the adapter's directory (re-committing it is
    answered by the stat cache), a new adapter that shares its tensors and
    adds new ones, and the ids of the objects stored (no two rounds share
    one). Set up in-process, before any race.
    """
    repo = Repository.open(repo_dir)
    out = []
    for i in range(ROUNDS):
        tensors = lora_tensors(rng, MODULES)
        old = tiny_adapter(work / f"old-{i}", tensors)
        new = tiny_adapter(work / f"new-{i}", {**tensors, **lora_tensors(rng, 2, first=MODULES)})
        aid = import_adapter(repo, inspect_adapter_dir(old))
        out.append((old, new, [aid, *repo.read_adapter(aid).referenced_ids()]))
    # A Python process that wrote holds the writer lock until it closes the store.
    repo.store.close()
    return out


def object_file(objects: Path, oid: str) -> Path:
    return objects / oid[:2] / oid[2:]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A repository with a first commit on main, and each round's old checkpoint set aside, built once.

    The objects of round I's old checkpoint are moved out of the repository
    into `stash/I` (so that a gc of an earlier round cannot delete them, and
    no gc walks them); the round puts them back. Copies of the repository keep the stat cache entries: they name
    the adapter directories, which stay where they are."""
    root = tmp_path_factory.mktemp("gc-race")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in isolated_env(root / "home").items():
            if k.startswith("MFGIT_"):
                mp.setenv(k, v)
        rng = np.random.default_rng(7)
        repo = Repository.init(root / "repo")
        repo.commit(tiny_adapter(root / "first", lora_tensors(rng, 2)), "first")
        repo.store.close()
        checkpoints = old_checkpoints(root / "repo", root / "adapters", rng)
    objects = root / "repo" / ".mfgit" / "objects"
    for i, (_, _, oids) in enumerate(checkpoints):
        for oid in oids:
            dst = object_file(root / "stash" / str(i), oid)
            dst.parent.mkdir(parents=True, exist_ok=True)
            object_file(objects, oid).rename(dst)
    return SimpleNamespace(repo=root / "repo", stash=root / "stash", checkpoints=checkpoints)


def unstash(template: SimpleNamespace, i: int, objects: Path, age: float) -> None:
    """Put round `i`'s old checkpoint back into `objects`, its files `age` seconds old."""
    past = time.time() - age
    for oid in template.checkpoints[i][2]:
        dst = object_file(objects, oid)
        dst.parent.mkdir(exist_ok=True)
        shutil.copy2(object_file(template.stash / str(i), oid), dst)
        if age:
            os.utime(dst, (past, past))


class Worker:
    """A long-running racing process (WORKER)."""

    def __init__(self, cli: Cli, repo_dir: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(repo_dir)], env=cli.env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline().strip() == "ready"

    def ask(self, *request) -> None:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def answer(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"a racing process died (exit {self.proc.poll()})"
        out = json.loads(line)
        assert "error" not in out, out["error"]
        return out

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class GcCommand:
    """The real `mfgit gc` command, started as a process per request, with the same interface as Worker."""

    def __init__(self, cli: Cli, repo_dir: Path, args: list[str]):
        self.cli, self.repo_dir, self.args, self.proc = cli, repo_dir, args, None

    def ask(self, *_request) -> None:
        self.t0 = time.monotonic()
        self.proc = self.cli.popen("gc", *self.args, cwd=self.repo_dir)

    def answer(self) -> dict:
        _, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err
        return {"t0": self.t0, "t1": time.monotonic()}


def race(gc, committer: Worker, grace: float, src: Path, offset: float) -> tuple[dict, dict]:
    """One gc and one commit, the commit asked for `offset` seconds after the gc (before it, when negative)."""
    message = f"commit of {src.name}"
    if offset < 0:
        committer.ask("commit", str(src), message)
        time.sleep(-offset)
    gc.ask("gc", grace)
    if offset >= 0:
        time.sleep(offset)
        committer.ask("commit", str(src), message)
    return gc.answer(), committer.answer()


@pytest.mark.parametrize("gc_args, age", [(["--prune=now"], 0.0), ([], 30 * 86400.0)],
                         ids=["prune-now", "default-grace-backdated"])
def test_gc_concurrent_with_commits_reusing_old_unreachable_objects_loses_no_commit(cli, mfgit_env, tmp_path,
                                                                                      template, gc_args, age):
    order = random.Random(11)
    repo_dir = tmp_path / "repo"
    shutil.copytree(template.repo, repo_dir, symlinks=True)
    made = [Repository.open(repo_dir).head()]
    grace = 0.0 if gc_args else 14 * 86400.0
    committer, gc_worker = Worker(cli, repo_dir), Worker(cli, repo_dir)
    gc_command = GcCommand(cli, repo_dir, gc_args)
    gc_seconds = [0.1]  # how long a gc runs, measured as the rounds go
    overlapped = deleted = 0
    try:
        for i, (old, new, _) in enumerate(template.checkpoints):
            unstash(template, i, repo_dir / ".mfgit" / "objects", age)
            repo = Repository.open(repo_dir)
            src = old if i % 2 == 0 else new
            # Every tenth gc is the `mfgit gc` command itself, the others a
            # long-running process's (no process start: cheap rounds).
            gc = gc_command if i % 10 == 9 else gc_worker
            # From a little before gc starts to a little after it usually ends.
            offset = order.uniform(-0.02, 1.2 * statistics.median(gc_seconds))
            ran, commit = race(gc, committer, grace, src, offset)
            if gc is gc_worker:
                gc_seconds.append(ran["t1"] - ran["t0"])
            overlapped += commit["t0"] < ran["t1"] and ran["t0"] < commit["t1"]
            deleted += ran.get("deleted", 0)
            where = f"round {i} ({src.name}, commit asked for {offset:+.3f} s after gc started)"
            assert repo.head() == commit["id"] and commit["parents"] == [made[-1]], where
            made.append(commit["id"])
            # No commit lost: the branch holds every one made so far, the new one with its whole adapter.
            for oid in repo.read_adapter(repo.read_commit(commit["id"]).adapter).referenced_ids():
                assert repo.store.has(oid), (where, oid)
            if i % FSCK_EVERY == FSCK_EVERY - 1:
                assert [c.id for c in repo.log("HEAD")] == made[::-1], where
                report = repo.fsck()
                assert report["ok"] and report["missing"] == [] and report["corrupt"] == [], (where, report)
    finally:
        committer.close()
        gc_worker.close()
    repo = Repository.open(repo_dir)
    assert [c.id for c in repo.log("HEAD")] == made[::-1]
    assert repo.fsck(read_data=True)["ok"]
    print(f"gc median {statistics.median(gc_seconds):.3f} s; {overlapped} of {ROUNDS} rounds overlapped; "
          f"{deleted} objects deleted")
    assert deleted > 0  # gc had deleting to do
    # A real race: in a good share of the rounds the commit ran while the gc process did.
    assert overlapped >= ROUNDS // 4, f"only {overlapped} of {ROUNDS} rounds overlapped"
