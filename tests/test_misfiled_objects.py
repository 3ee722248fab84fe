"""A valid object file stored under another object's name is caught by every read.

The bug: object files were checked by the XXH3-128 of their own bytes only,
so a sound file of one object copied over another's (a tensor of the same
shape, the parent commit) passed `fsck` without --read-data, `checkout`
exited 0 with the wrong weights, and `push` sent the misfiled bytes to the
remote. Since store version 2 the digest covers the id being read, so each
of them refuses, in one line, and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from mfgit.api.repository import Repository
from tests.conftest import Cli, build_adapter


def object_path(gitdir: Path, oid: str) -> Path:
    return gitdir / "objects" / oid[:2] / oid[2:]


def misfile(gitdir: Path, victim: str, other: str) -> None:
    """Copy the (valid) object file of `other` over the file of `victim`."""
    dst = object_path(gitdir, victim)
    os.chmod(dst, 0o644)
    shutil.copyfile(object_path(gitdir, other), dst)
    os.chmod(dst, 0o444)


@pytest.fixture(scope="module")
def two_commits(tmp_path_factory):
    """A repository with two commits of real adapters; tests damage copies of it."""
    root = tmp_path_factory.mktemp("misfiled")
    cli = Cli(root / "home", root)
    cli.ok("init", root / "repo")
    first = cli.json("commit", build_adapter(root, seed=71), "-m", "first", "--json", cwd=root / "repo")
    second = cli.json("commit", build_adapter(root, seed=72), "-m", "second", "--json", cwd=root / "repo")
    repo = Repository.open(root / "repo")
    adapter = repo.read_adapter(second["adapter"])
    by_shape: dict[tuple, list[str]] = {}
    for name in sorted(adapter.tensors):
        t = adapter.tensors[name]
        by_shape.setdefault((t["dtype"], tuple(t["shape"])), []).append(t["id"])
    a, b = next(ids for ids in by_shape.values() if len(set(ids)) >= 2)[:2]
    repo.store.close()
    return SimpleNamespace(path=root / "repo", cases={"same-shape tensor": (a, b),
                                                      "parent commit": (second["id"], first["id"])})


@pytest.fixture(params=["same-shape tensor", "parent commit"])
def misfiled(request, two_commits, tmp_path, cli):
    repo_dir = tmp_path / "repo"
    shutil.copytree(two_commits.path, repo_dir)
    victim, other = two_commits.cases[request.param]
    misfile(repo_dir / ".mfgit", victim, other)
    return SimpleNamespace(path=repo_dir, victim=victim, other=other, case=request.param)


def test_fsck_without_read_data_reports_a_misfiled_object(cli, misfiled):
    res = cli("fsck", "--json", cwd=misfiled.path)
    report = json.loads(res.stdout)
    assert res.returncode == 5 and report["ok"] is False
    (entry,) = report["corrupt"]
    assert entry["id"] == misfiled.victim and entry["algorithm"] == "xxh3-128"
    assert entry["expected"] != entry["actual"]
    # The file it is a copy of is itself sound.
    assert misfiled.other not in [c["id"] for c in report["corrupt"]]
    text = cli("fsck", cwd=misfiled.path)
    assert text.returncode == 5 and f"corrupt object {misfiled.victim}" in text.stdout and "DAMAGED" in text.stdout


def test_checkout_refuses_a_misfiled_object_in_one_line_and_leaves_no_output(cli, misfiled, tmp_path):
    line = cli.fails("checkout", "HEAD", "--to", tmp_path / "new", cwd=misfiled.path, code=5)
    assert misfiled.victim in line and "corrupt" in line
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    cli.fails("checkout", "HEAD", "--to", tmp_path / "empty", cwd=misfiled.path, code=5)
    assert list((tmp_path / "empty").iterdir()) == []


def test_push_refuses_to_send_a_misfiled_object(cli, misfiled, tmp_path):
    hub = tmp_path / "hub"
    cli.ok("init", "--bare", hub)
    cli.ok("remote", "add", "hub", hub, cwd=misfiled.path)
    line = cli.fails("push", "hub", "main", cwd=misfiled.path, code=5)
    assert misfiled.victim in line and "corrupt" in line
    # The remote's branch did not move, and the misfiled bytes are not there.
    assert not (hub / "refs" / "heads" / "main").exists()
    assert not object_path(hub, misfiled.victim).exists()
