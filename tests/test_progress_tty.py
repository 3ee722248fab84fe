"""Long commands show progress on a terminal, and none when piped or with --quiet / --json.

The real CLI runs on a real pseudo-terminal (os.openpty) for stderr.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import MFGIT, build_adapter


def _run(cli, repo_dir, args, *, tty: bool) -> tuple[int, str]:
    """(exit code, what reached stderr) with stderr a pseudo-terminal or a pipe."""
    if not tty:
        r = subprocess.run([MFGIT, *args], cwd=repo_dir, env=cli.env, capture_output=True, text=True, timeout=120)
        return r.returncode, r.stderr
    main, sub = os.openpty()
    try:
        p = subprocess.Popen([MFGIT, *args], cwd=repo_dir, env=cli.env, stdout=subprocess.DEVNULL, stderr=sub)
        os.close(sub)
        chunks = []
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the terminal's other end closed
                break
            if not data:
                break
            chunks.append(data)
        return p.wait(timeout=120), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(main)


@pytest.fixture
def two_commits(cli, repo_dir, adapter_store):
    cli.ok("commit", build_adapter(adapter_store, seed=11), "-m", "one", cwd=repo_dir)
    cli.ok("commit", build_adapter(adapter_store, seed=12), "-m", "two", cwd=repo_dir)
    return repo_dir


@pytest.mark.parametrize("args, label", [(["fsck", "--read-data"], "checking objects"),
                                         (["gc", "--dry-run"], "sweeping objects")])
def test_progress_shows_on_a_terminal(cli, two_commits, args, label):
    code, err = _run(cli, two_commits, args, tty=True)
    assert code == 0 and label in err


@pytest.mark.parametrize("args", [["fsck", "--read-data"], ["gc", "--dry-run"]])
@pytest.mark.parametrize("how", ["pipe", "--quiet", "--json"])
def test_no_progress_when_piped_quiet_or_json(cli, two_commits, args, how):
    extra = [] if how == "pipe" else [how]
    code, err = _run(cli, two_commits, args + extra, tty=how != "pipe")
    assert code == 0 and "objects" not in err and err.strip() == ""


@pytest.mark.parametrize("tty, quiet", [(True, False), (True, True), (False, False)])
def test_commit_and_checkout_show_bytes_on_a_terminal_only(cli, repo_dir, adapter_store, tmp_path, tty, quiet):
    q = ["--quiet"] if quiet else []
    code, err = _run(cli, repo_dir, ["commit", build_adapter(adapter_store, seed=13), "-m", "one", *q], tty=tty)
    assert code == 0 and (("commit: 100.0%" in err) == (tty and not quiet)), err
    code, err = _run(cli, repo_dir, ["checkout", "HEAD", "--to", tmp_path / "out", *q], tty=tty)
    assert code == 0 and (("checkout: 100.0%" in err) == (tty and not quiet)), err
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("how", ["tty", "--json"])
def test_verify_reproduce_shows_progress_on_a_terminal_only(cli, repo_dir, adapter_store, how):
    for site, seed in (("a", 21), ("b", 22)):
        cli.ok("switch", "--orphan", f"sites/{site}", cwd=repo_dir)
        cli.ok("commit", build_adapter(adapter_store, seed=seed), "-m", site, cwd=repo_dir)
    cli.ok("switch", "--orphan", "main", cwd=repo_dir)
    cli.ok("merge", "sites/a", "sites/b", "-m", "merged", cwd=repo_dir)
    extra = [] if how in ("tty", "pipe") else [how]
    code, err = _run(cli, repo_dir, ["verify", "--reproduce", *extra], tty=how != "pipe")
    assert code == 0 and (("re-running merges" in err) == (how == "tty")), err
