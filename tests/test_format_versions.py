"""Format version 1 repositories and remotes stay usable, and say so once they hold version-2 objects.

Regression: the remote check required the current version exactly, so a
remote made by an earlier mfgit (format version 1) was refused, and a push
into one would not have marked it as holding version-2 object files.
"""

from __future__ import annotations

import configparser


def _version(config_path) -> str:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.read(config_path)
    return cp.get("core", "formatversion")


def test_a_version_1_remote_is_fetched_from_and_upgraded_by_the_first_push(cli, repo_dir, adapter_dir, tmp_path):
    hub = tmp_path / "hub.mfgit"
    cli.ok("init", "--bare", hub)
    cfg = (hub / "config").read_text().replace("formatversion = 2", "formatversion = 1")
    (hub / "config").write_text(cfg)
    assert _version(hub / "config") == "1"
    cli.ok("remote", "add", "hub", hub, cwd=repo_dir)
    cli.ok("fetch", "hub", cwd=repo_dir)  # readable as it is
    assert _version(hub / "config") == "1"  # reading changes nothing
    cli.ok("commit", adapter_dir("a", seed=1), "-m", "one", cwd=repo_dir)
    cli.ok("push", "hub", "main", cwd=repo_dir)
    assert _version(hub / "config") == "2"
    clone = tmp_path / "clone"
    cli.ok("clone", hub, clone)
    cli.ok("fsck", "--read-data", cwd=clone)


def test_an_unknown_remote_version_is_refused_in_one_line(cli, repo_dir, tmp_path):
    hub = tmp_path / "hub.mfgit"
    cli.ok("init", "--bare", hub)
    (hub / "config").write_text((hub / "config").read_text().replace("formatversion = 2", "formatversion = 9"))
    cli.ok("remote", "add", "hub", hub, cwd=repo_dir)
    line = cli.fails("fetch", "hub", cwd=repo_dir, code=3)
    assert "version '9'" in line
