"""checkout --force into a used directory writes the whole new adapter or nothing.

Regression: a refusal half way (a directory or a symbolic link where an
adapter file goes) left a mix of the old and the new adapter's files.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest


def _digests(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())
            if p.is_file() and not p.is_symlink()}


@pytest.fixture
def two_commits(cli, repo_dir, adapter_dir):
    cli.ok("commit", adapter_dir("one", seed=1), "-m", "one", cwd=repo_dir)
    cli.ok("commit", adapter_dir("two", seed=2), "-m", "two", cwd=repo_dir)
    return repo_dir


@pytest.mark.parametrize("obstacle", ["directory", "symlink"])
def test_forced_checkout_refused_half_way_leaves_the_old_files_untouched(cli, two_commits, tmp_path, obstacle):
    out = tmp_path / "out"
    cli.ok("checkout", "HEAD~1", "--to", out, cwd=two_commits)
    # The config stays a file, the weights become something checkout must not replace.
    weights = out / "adapter_model.safetensors"
    weights.unlink()
    if obstacle == "directory":
        weights.mkdir()
        (weights / "keep").write_text("mine")
    else:
        (tmp_path / "elsewhere").write_text("not yours")
        os.symlink(tmp_path / "elsewhere", weights)
    before = _digests(out)
    line = cli.fails("checkout", "HEAD", "--to", out, "--force", cwd=two_commits, code=4)
    assert "refusing to replace" in line and "nothing was written" in line
    assert _digests(out) == before, "a file was replaced although the checkout was refused"
    assert not [p for p in out.iterdir() if p.name.startswith(".mfgit-checkout-")]
    if obstacle == "symlink":
        assert (tmp_path / "elsewhere").read_text() == "not yours"


def test_forced_checkout_over_regular_files_replaces_every_adapter_file(cli, two_commits, tmp_path):
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    cli.ok("checkout", "HEAD~1", "--to", out, cwd=two_commits)
    (out / "notes.txt").write_text("the user's own file")
    cli.ok("checkout", "HEAD", "--to", out, "--force", cwd=two_commits)
    cli.ok("checkout", "HEAD", "--to", fresh, cwd=two_commits)
    got = _digests(out)
    assert got.pop("notes.txt") == hashlib.sha256(b"the user's own file").hexdigest()
    assert got == _digests(fresh)
