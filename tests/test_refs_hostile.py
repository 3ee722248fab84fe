"""Refs, reflogs, config and the stat cache under hostile or damaged bytes.

The audit record must not lie whatever a participant writes into the
repository folder: a damaged ref, HEAD, reflog or config file is one line
naming the file and the fix (never a traceback, never exit 70), fsck reports
it as damage and keeps going, nothing is read from outside the repository,
a ref that names no commit is never recorded as a parent, a stat cache entry
mfgit did not write never decides which adapter a commit records, and a
failed write leaves the ref and its reflog agreeing on what happened.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfgit.api.repository import Repository
from mfgit.cli import errors as cli_errors
from mfgit.refs import ANY, DiskRefs
from mfgit.repo.statcache import KEY_NAME, StatCache
from tests.conftest import MFGIT, one_line_error

TABLE_CODES = {code for _typ, code, _fix in cli_errors.TABLE} | {cli_errors.OS_ERROR, cli_errors.OK}


def gitdir(repo_dir: Path) -> Path:
    return repo_dir / ".mfgit"


def ref_file(repo_dir: Path, name: str = "refs/heads/main") -> Path:
    return gitdir(repo_dir) / name


def log_file(repo_dir: Path, name: str = "refs/heads/main") -> Path:
    return gitdir(repo_dir) / "logs" / name


def object_path(repo_dir: Path, oid: str) -> Path:
    return gitdir(repo_dir) / "objects" / oid[:2] / oid[2:]


def fsck_json(cli, repo_dir: Path) -> tuple[int, dict]:
    res = cli("fsck", "--json", cwd=repo_dir)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, json.loads(res.stdout)


def clean(res: subprocess.CompletedProcess) -> None:
    """Exit 0, or one `mfgit: …` line and an exit code from the table; never an internal error.

    fsck finding damage is a report on stdout ending DAMAGED (exit 5), not an error.
    """
    assert res.returncode != cli_errors.INTERNAL, res.stderr
    assert res.returncode in TABLE_CODES, (res.returncode, res.stderr)
    if res.args[1] == "fsck" and res.returncode == cli_errors.DAMAGED and not res.stderr:
        assert res.stdout.rstrip().endswith(": DAMAGED"), res.stdout
    elif res.returncode != 0:
        one_line_error(res.stderr)
    else:
        assert "Traceback" not in res.stderr, res.stderr


@pytest.fixture
def committed(cli, repo_dir, adapter_dir):
    src = adapter_dir("a", seed=71)
    cli.ok("commit", src, "-m", "one", cwd=repo_dir)
    return src


# --- item 11: a ref that names no commit is never a parent --------------------------------------

DAMAGED_VALUES = {
    "garbage": b"garbage\n",
    "63-hex-digits": b"a" * 63 + b"\n",
    "missing-commit": b"e" * 64 + b"\n",
    "non-utf8": b"\xff\xfe" + b"a" * 62 + b"\n",
    "empty": b"",
}


@pytest.mark.parametrize("case", sorted(DAMAGED_VALUES))
def test_commit_allow_empty_on_a_damaged_branch_ref_is_refused_not_recorded_as_parent(cli, repo_dir, committed,
                                                                                       case):
    good = ref_file(repo_dir).read_text().strip()
    ref_file(repo_dir).write_bytes(DAMAGED_VALUES[case])
    commits_before = len(list((gitdir(repo_dir) / "objects").glob("??/*")))
    line = cli.fails("commit", committed, "-m", "again", "--allow-empty", cwd=repo_dir, code=cli_errors.DAMAGED)
    assert "ref refs/heads/main" in line and str(ref_file(repo_dir)) in line
    assert "mfgit branch -f main REV" in line
    assert len(list((gitdir(repo_dir) / "objects").glob("??/*"))) == commits_before  # nothing was written
    assert ref_file(repo_dir).read_bytes() == DAMAGED_VALUES[case]
    # The fix the message names works, and commits then chain on the good parent.
    cli.ok("branch", "-f", "main", good, cwd=repo_dir)
    new = cli.json("commit", committed, "-m", "again", "--allow-empty", "--json", cwd=repo_dir)
    assert new["parents"] == [good]


def test_a_branch_pointing_at_an_adapter_is_refused_as_a_parent(cli, repo_dir, committed):
    repo = Repository.open(repo_dir)
    adapter = repo.read_commit(repo.head()).adapter
    ref_file(repo_dir).write_text(adapter + "\n")
    line = cli.fails("commit", committed, "-m", "x", "--allow-empty", cwd=repo_dir, code=cli_errors.DAMAGED)
    assert "refs/heads/main" in line and "points to an adapter, not a commit" in line
    line = cli.fails("log", cwd=repo_dir, code=cli_errors.DAMAGED)
    assert "refs/heads/main" in line
    assert _bad_ref_names(cli, repo_dir)["refs/heads/main"] == "points to an adapter, not a commit"


# --- item 19: bad bytes in refs, HEAD, reflogs and config are one line, fsck goes on --------------


@pytest.mark.parametrize("target", ["refs/heads/main", "HEAD"])
def test_non_utf8_bytes_in_a_ref_or_head_give_one_line_naming_the_file(cli, repo_dir, committed, target):
    path = gitdir(repo_dir) / target
    data = bytearray(path.read_bytes())
    data[6] = 0xFF
    path.write_bytes(bytes(data))
    for args in (["log"], ["status"], ["commit", committed, "-m", "x", "--allow-empty"]):
        line = cli.fails(*args, cwd=repo_dir, code=cli_errors.DAMAGED)
        assert str(path) in line and "not UTF-8" in line, line
    res = cli("branch", cwd=repo_dir)
    clean(res)
    code, report = fsck_json(cli, repo_dir)
    assert code == cli_errors.DAMAGED and not report["ok"]
    bad = {b["ref"]: b for b in report["bad_refs"]}
    assert "not UTF-8" in bad[target]["error"] and bad[target]["fix"]
    assert report["objects_checked"] > 0  # fsck kept going
    text = cli("fsck", cwd=repo_dir)
    assert text.returncode == cli_errors.DAMAGED and f"bad ref {target}: not UTF-8" in text.stdout


def test_a_damaged_reflog_line_is_reported_and_expire_malformed_is_the_way_out(cli, repo_dir, committed,
                                                                               adapter_dir):
    cli.ok("commit", adapter_dir("b", seed=72), "-m", "two", cwd=repo_dir)
    log = log_file(repo_dir)
    lines = log.read_bytes().split(b"\n")
    lines[0] = lines[0][:10] + b"\xff" + lines[0][11:]
    log.write_bytes(b"\n".join(lines))
    cli.ok("log", cwd=repo_dir)  # history does not depend on the reflog
    code, report = fsck_json(cli, repo_dir)
    assert code == cli_errors.DAMAGED
    assert report["bad_reflog_lines"] == [{"ref": "refs/heads/main", "line": 1, "error": report["bad_reflog_lines"][0]["error"],
                                           "fix": "mfgit reflog expire --malformed refs/heads/main"}]
    assert "not UTF-8" in report["bad_reflog_lines"][0]["error"]
    line = cli.fails("gc", cwd=repo_dir, code=cli_errors.DAMAGED)
    assert str(log) in line and "mfgit reflog expire --malformed refs/heads/main" in line
    shown = cli.json("reflog", "main", "--json", cwd=repo_dir)
    assert len(shown["entries"]) == 1 and shown["damaged_lines"][0]["line"] == 1
    res = cli.json("reflog", "expire", "--malformed", "main", "--json", cwd=repo_dir)
    assert res["dropped"] == 1
    code, report = fsck_json(cli, repo_dir)
    assert code == 0 and report["ok"], report
    cli.ok("gc", cwd=repo_dir)


@pytest.mark.parametrize("scope", ["repository", "global"])
def test_non_utf8_bytes_in_a_config_file_give_one_line_naming_the_file(cli, repo_dir, committed, scope):
    path = gitdir(repo_dir) / "config" if scope == "repository" else Path(cli.env["MFGIT_CONFIG_GLOBAL"])
    if scope == "global":
        path.write_text("[user]\nsite = hospital-a\n")
    data = bytearray(path.read_bytes())
    data[3] = 0xFF
    path.write_bytes(bytes(data))
    commands = [["log"], ["status"], ["branch"], ["fsck"], ["commit", committed, "-m", "x", "--allow-empty"]]
    for args in commands if scope == "repository" else commands[-1:]:
        line = cli.fails(*args, cwd=repo_dir, code=cli_errors.BAD_INPUT)
        assert f"config file {path}" in line and "UTF-8" in line, line


def test_a_config_file_that_is_not_ini_is_one_line(cli, repo_dir):
    (gitdir(repo_dir) / "config").write_text("this is not ini\n")
    line = cli.fails("log", cwd=repo_dir, code=cli_errors.BAD_INPUT)
    assert "config file" in line and "correct or restore it" in line


# --- item 20: fsck never says ok when refs are gone, looping or pointing outside --------------------


def _bad_ref_names(cli, repo_dir) -> dict[str, str]:
    code, report = fsck_json(cli, repo_dir)
    assert code == cli_errors.DAMAGED and report["ok"] is False, report
    return {b["ref"]: b["error"] for b in report["bad_refs"]}


def test_fsck_reports_refs_replaced_by_a_file(cli, repo_dir, committed):
    refs = gitdir(repo_dir) / "refs"
    shutil.rmtree(refs)
    refs.write_text("not a folder\n")
    assert "is not a folder" in _bad_ref_names(cli, repo_dir)["refs/"]
    line = cli.fails("log", cwd=repo_dir, code=cli_errors.DAMAGED)
    assert "refs/" in line and "every branch and tag is gone" in line


def test_fsck_reports_a_missing_refs_folder(cli, repo_dir, committed):
    shutil.rmtree(gitdir(repo_dir) / "refs")
    assert "missing" in _bad_ref_names(cli, repo_dir)["refs/"]


def test_fsck_reports_an_empty_head(cli, repo_dir, committed):
    ref_file(repo_dir, "HEAD").write_text("")
    assert _bad_ref_names(cli, repo_dir)["HEAD"] == "empty ref file"
    line = cli.fails("status", cwd=repo_dir, code=cli_errors.DAMAGED)
    assert "HEAD" in line and "mfgit switch BRANCH" in line
    cli.ok("switch", "main", cwd=repo_dir)  # the way out the message names
    assert fsck_json(cli, repo_dir)[0] == 0


def test_fsck_reports_a_loop_of_symbolic_refs(cli, repo_dir, committed):
    ref_file(repo_dir, "HEAD").write_text("ref: refs/heads/a\n")
    ref_file(repo_dir, "refs/heads/a").write_text("ref: refs/heads/b\n")
    ref_file(repo_dir, "refs/heads/b").write_text("ref: refs/heads/a\n")
    bad = _bad_ref_names(cli, repo_dir)
    assert bad["HEAD"] == "symbolic refs form a loop: HEAD -> refs/heads/a -> refs/heads/b -> refs/heads/a"
    assert "loop" in bad["refs/heads/a"] and "loop" in bad["refs/heads/b"]
    for args in (["log"], ["status"], ["commit", committed, "-m", "x", "--allow-empty"]):
        assert "loop" in cli.fails(*args, cwd=repo_dir, code=cli_errors.DAMAGED)


@pytest.mark.parametrize("value", ["ref: ../../etc/passwd", "ref: logs/refs/heads/main", "ref: /etc/passwd"])
def test_fsck_reports_head_pointing_outside_refs(cli, repo_dir, committed, value):
    ref_file(repo_dir, "HEAD").write_text(value + "\n")
    assert "is a symbolic ref to" in _bad_ref_names(cli, repo_dir)["HEAD"]
    line = cli.fails("log", cwd=repo_dir, code=cli_errors.DAMAGED)
    assert "root:" not in line


@pytest.mark.parametrize("target", ["HEAD", "refs/heads/main"])
def test_a_ref_that_is_a_symbolic_link_out_of_the_repository_is_never_read(cli, repo_dir, committed, tmp_path,
                                                                           target):
    secret = tmp_path / "secret"
    # Outside the repository: a value that would read as a valid ref, and a secret.
    good = ref_file(repo_dir).read_text()
    secret.write_text(good if target != "HEAD" else "SECRET-outside-the-repository\n")
    path = gitdir(repo_dir) / target
    path.unlink()
    path.symlink_to(secret)
    assert "symbolic link" in _bad_ref_names(cli, repo_dir)[target]
    for args in (["log"], ["status"], ["fsck"]):
        res = cli(*args, cwd=repo_dir)
        assert res.returncode == cli_errors.DAMAGED
        assert "SECRET" not in res.stdout + res.stderr
    if target == "HEAD":
        cli.ok("switch", "main", cwd=repo_dir)
        assert not path.is_symlink() and secret.read_text().startswith("SECRET")


def test_a_refs_folder_that_is_a_symbolic_link_out_of_the_repository_is_reported(cli, repo_dir, committed,
                                                                                 tmp_path):
    heads = gitdir(repo_dir) / "refs" / "heads"
    outside = tmp_path / "outside-heads"
    shutil.move(heads, outside)
    heads.symlink_to(outside)
    bad = _bad_ref_names(cli, repo_dir)
    assert "symbolic link" in bad["refs/heads/"]
    line = cli.fails("log", cwd=repo_dir, code=cli_errors.DAMAGED)
    assert "leads out of the repository" in line


def test_a_ref_file_with_an_invalid_name_is_reported_not_listed(cli, repo_dir, committed):
    good = ref_file(repo_dir).read_text()
    ref_file(repo_dir, "refs/heads/a..b").write_text(good)
    assert "not a valid ref name" in _bad_ref_names(cli, repo_dir)["refs/heads/a..b"]
    names = [b["name"] for b in cli.json("branch", "--json", cwd=repo_dir)["branches"]]
    assert names == ["main"]


# --- item 10: a reflog entry naming a missing object has a way out ------------------------------------


def _abandoned_commit(cli, repo_dir, adapter_dir) -> str:
    """A commit only the reflog of branch x remembers."""
    cli.ok("switch", "-c", "x", cwd=repo_dir)
    cli.ok("commit", adapter_dir("x", seed=73), "-m", "only on x", cwd=repo_dir)
    tip = ref_file(repo_dir, "refs/heads/x").read_text().strip()
    cli.ok("switch", "main", cwd=repo_dir)
    cli.ok("branch", "-f", "x", "main", cwd=repo_dir)
    return tip


def test_a_reflog_entry_naming_a_missing_object_is_named_by_fsck_and_expire_missing_is_the_way_out(
        cli, repo_dir, committed, adapter_dir):
    gone = _abandoned_commit(cli, repo_dir, adapter_dir)
    object_path(repo_dir, gone).unlink()
    code, report = fsck_json(cli, repo_dir)
    assert code == cli_errors.DAMAGED and {"id": gone} in report["missing"]
    entries = {e["entry"]: e for e in report["reflog_damage"]}
    assert set(entries) == {"refs/heads/x@{0}", "refs/heads/x@{1}"}  # moved to it, and away from it
    assert entries["refs/heads/x@{0}"]["fix"] == "mfgit reflog expire --missing refs/heads/x"
    text = cli("fsck", cwd=repo_dir).stdout
    assert f"reflog entry refs/heads/x@{{0}} names missing or unreadable object {gone}" in text
    assert "(drop it with: mfgit reflog expire --missing refs/heads/x)" in text
    line = cli.fails("gc", "--prune=now", cwd=repo_dir, code=cli_errors.DAMAGED)
    assert "refs/heads/x@{" in line and "mfgit reflog expire --missing refs/heads/x" in line
    # The way out: only the entries that reach the missing object go.
    before = cli.json("reflog", "x", "--json", cwd=repo_dir)["entries"]
    res = cli.json("reflog", "expire", "--missing", "x", "--json", cwd=repo_dir)
    assert res["dropped"] == 2
    after = cli.json("reflog", "x", "--json", cwd=repo_dir)["entries"]
    assert len(after) == len(before) - 2 and all(gone not in (e["old"], e["new"]) for e in after)
    code, report = fsck_json(cli, repo_dir)
    assert code == 0 and report["ok"], report
    cli.ok("gc", "--prune=now", cwd=repo_dir)


def test_reflog_shows_every_move_newest_first_and_expire_older_than_frees_objects(cli, repo_dir, committed,
                                                                                   adapter_dir):
    gone = _abandoned_commit(cli, repo_dir, adapter_dir)
    shown = cli.json("reflog", "x", "--json", cwd=repo_dir)
    assert [e["entry"] for e in shown["entries"]] == ["refs/heads/x@{0}", "refs/heads/x@{1}", "refs/heads/x@{2}"]
    assert shown["entries"][1]["new"] == gone and shown["entries"][0]["old"] == gone
    text = cli.ok("reflog", "x", cwd=repo_dir).stdout.splitlines()
    assert text[1].startswith(f"{gone[:10]} refs/heads/x@{{1}}: commit: only on x")
    assert cli.json("gc", "--prune=now", "--json", cwd=repo_dir)["deleted"] == 0
    cli.ok("reflog", "expire", "--older-than", "now", "--all", cwd=repo_dir)
    assert cli.json("reflog", "x", "--json", cwd=repo_dir)["entries"] == []
    assert cli.json("gc", "--prune=now", "--json", cwd=repo_dir)["deleted"] > 0
    assert not object_path(repo_dir, gone).exists()
    assert fsck_json(cli, repo_dir)[0] == 0


def test_reflog_expire_needs_a_selector_and_refs(cli, repo_dir, committed):
    assert cli("reflog", "expire", "main", cwd=repo_dir).returncode == cli_errors.USAGE
    assert cli("reflog", "expire", "--missing", cwd=repo_dir).returncode == cli_errors.USAGE
    line = cli.fails("reflog", "nosuchbranch", cwd=repo_dir, code=cli_errors.BAD_INPUT)
    assert "nosuchbranch" in line


# --- item 9: a failed write leaves ref and reflog agreeing ---------------------------------------------


def _limited(limit: int):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), not death by signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def _run_limited(cli, repo_dir: Path, limit: int, *args) -> subprocess.CompletedProcess:
    return subprocess.run([MFGIT, *map(str, args)], cwd=repo_dir, env=cli.env, capture_output=True, text=True,
                          timeout=120, preexec_fn=_limited(limit))


def test_a_disk_full_at_any_point_of_a_commit_leaves_no_phantom_reflog_entry_rlimit_fsize(cli, repo_dir, committed):
    """A file-size limit (RLIMIT_FSIZE) makes the kernel refuse writes past a size for real:
    the commit object, the lock or the reflog append fails part-way, as on a full disk."""
    repo = Repository.open(repo_dir)
    first = repo.head()
    commit_size = object_path(repo_dir, first).stat().st_size
    log, ref = log_file(repo_dir), ref_file(repo_dir)
    # A reflog longer than a commit object, so a limit can let the object through and stop the append.
    while log.stat().st_size < 2 * commit_size + 2048:
        repo.refs.update("refs/heads/main", first, ANY, who="t <t@x>", message="reset: again")
    line_len = len(log.read_bytes().splitlines()[-1]) + 1
    deltas = [-5, 0, 1, 2, 17, line_len // 3, line_len // 2, line_len - 1, 10 * line_len, 0, 40, 10 * line_len]
    stopped_at_the_reflog = 0
    for delta in deltas:
        before_ref, before_log = ref.read_bytes(), log.read_bytes()
        res = _run_limited(cli, repo_dir, len(before_log) + delta, "commit", committed, "-m", "try", "--allow-empty")
        assert res.returncode in (0, cli_errors.OS_ERROR), res.stderr
        assert DiskRefs(gitdir(repo_dir)).stale_locks() == []
        if res.returncode == 0:
            new = ref.read_text().strip()
            assert new != before_ref.decode().strip()
            added = log.read_bytes()[len(before_log):]
            assert log.read_bytes().startswith(before_log) and added.count(b"\n") == 1
            assert json.loads(added)["old"] == before_ref.decode().strip() and json.loads(added)["new"] == new
        else:
            msg = one_line_error(res.stderr)
            assert str(gitdir(repo_dir)) in msg, msg  # the message names the file
            assert ref.read_bytes() == before_ref and log.read_bytes() == before_log, msg
            stopped_at_the_reflog += str(log) in msg
    assert stopped_at_the_reflog >= 5  # the limits did stop the append part-way, not only before it
    code, report = fsck_json(cli, repo_dir)
    assert code == 0 and report["ok"], report


def test_a_disk_full_at_the_lock_write_names_the_lock_file_rlimit_fsize(cli, repo_dir, committed):
    ref, log = ref_file(repo_dir), log_file(repo_dir)
    before_ref, before_log = ref.read_bytes(), log.read_bytes()
    res = _run_limited(cli, repo_dir, 10, "branch", "-f", "main", before_ref.decode().strip())
    assert res.returncode == cli_errors.OS_ERROR
    msg = one_line_error(res.stderr)
    assert f"{ref}.lock" in msg and "File too large" in msg
    assert ref.read_bytes() == before_ref and log.read_bytes() == before_log
    assert DiskRefs(gitdir(repo_dir)).stale_locks() == []


def test_a_failure_injected_at_the_ref_rename_leaves_no_phantom_reflog_entry(tmp_path, monkeypatch):
    # The rename cannot be made to fail for real without root; os.replace is
    # replaced at that exact step, after the reflog append succeeded.
    refs = DiskRefs(tmp_path)
    a, b = "a" * 64, "b" * 64
    refs.update("refs/heads/main", a, None, message="one")
    log = tmp_path / "logs" / "refs" / "heads" / "main"
    before = log.read_bytes()
    real_replace = os.replace

    def failing_replace(src, dst, *args, **kw):
        if str(src).endswith(".lock"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))
        return real_replace(src, dst, *args, **kw)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError) as info:
        refs.update("refs/heads/main", b, a, message="two")
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and info.value.filename.endswith("main.lock")
    assert refs.read("refs/heads/main") == a
    assert log.read_bytes() == before
    assert refs.stale_locks() == []
    refs.update("refs/heads/main", b, a, message="two")
    assert [(e.old, e.new) for e in refs.reflog("refs/heads/main")] == [(None, a), (a, b)]


# --- item 6: the stat cache never decides identity on its own word ---------------------------------


def _poison(repo_dir: Path, directory: Path, adapter_id: str, *, with_key: bool) -> None:
    path = gitdir(repo_dir) / "statcache.json"
    doc = json.loads(path.read_text())
    key = str(directory.resolve())
    doc[key]["adapter"] = adapter_id
    if with_key:  # a participant who can read the key file too
        doc[key]["mac"] = StatCache(path)._mac(key, doc[key])
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("with_key", [False, True], ids=["forged-entry", "forged-entry-and-mac"])
def test_a_poisoned_statcache_entry_never_makes_commit_record_another_adapter(cli, repo_dir, adapter_dir,
                                                                              with_key):
    other = adapter_dir("other", seed=74, r=4)  # another adapter, with other shapes
    mine = adapter_dir("mine", seed=75)
    repo = Repository.open(repo_dir)
    other_id = repo.commit(other, "other").commit.adapter
    mine_id = repo.commit(mine, "mine").commit.adapter
    key_file = gitdir(repo_dir) / KEY_NAME
    assert key_file.stat().st_mode & 0o777 == 0o600
    _poison(repo_dir, mine, other_id, with_key=with_key)
    again = cli.json("commit", mine, "-m", "again", "--allow-empty", "--json", cwd=repo_dir)
    assert again["adapter"] == mine_id
    assert cli.json("status", "--json", cwd=repo_dir)["sources"]  # status still answers
    assert fsck_json(cli, repo_dir)[0] == 0


def test_a_statcache_entry_under_another_key_is_not_trusted(cli, repo_dir, adapter_dir):
    mine = adapter_dir("mine", seed=76)
    same_shapes = adapter_dir("twin", seed=77)
    repo = Repository.open(repo_dir)
    twin_id = repo.commit(same_shapes, "twin").commit.adapter
    mine_id = repo.commit(mine, "mine").commit.adapter
    _poison(repo_dir, mine, twin_id, with_key=False)
    assert cli.json("commit", mine, "-m", "again", "--allow-empty", "--json", cwd=repo_dir)["adapter"] == mine_id


MALFORMED_CACHES = {
    "not-utf8": b"\xff\xfe{",
    "not-json": b"{",
    "a-list": b"[]",
    "deep": b"[" * 100_000,
    "entry-not-object": b'{"/x": 1}',
    "entry-bad-fields": b'{"/x": {"files": "nope", "adapter": 5, "written_ns": "x", "digest": null, "mac": []}}',
    "relative-key": b'{"x\\u0000y": {}}',
}


@pytest.mark.parametrize("case", sorted(MALFORMED_CACHES))
def test_a_malformed_statcache_never_crashes_commit_or_status(cli, repo_dir, committed, case):
    (gitdir(repo_dir) / "statcache.json").write_bytes(MALFORMED_CACHES[case])
    cli.ok("status", cwd=repo_dir)
    cli.ok("commit", committed, "-m", "again", "--allow-empty", cwd=repo_dir)
    cli.ok("status", cwd=repo_dir)


def test_a_statcache_that_is_a_folder_or_a_bad_key_costs_only_a_reread(cli, repo_dir, committed):
    key = gitdir(repo_dir) / KEY_NAME
    key.chmod(0o644)  # readable by others: its entries could be forged, so it is replaced
    cli.ok("commit", committed, "-m", "again", "--allow-empty", cwd=repo_dir)
    assert key.stat().st_mode & 0o777 == 0o600
    (gitdir(repo_dir) / "statcache.json").unlink()
    (gitdir(repo_dir) / "statcache.json").mkdir()
    cli.ok("commit", committed, "-m", "again", "--allow-empty", cwd=repo_dir)
    cli.ok("status", cwd=repo_dir)


# --- property: any bytes in a ref, HEAD, reflog or config file give exit 0 or one clean line -----------

TARGETS = ["HEAD", "refs/heads/main", "logs/refs/heads/main", "config"]


@st.composite
def mutations(draw):
    target = draw(st.sampled_from(TARGETS))
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "replace"]))
    pos = draw(st.integers(min_value=0, max_value=4096))
    data = draw(st.binary(min_size=1, max_size=24))
    return target, kind, pos, data


def _mutate(path: Path, kind: str, pos: int, data: bytes) -> None:
    old = path.read_bytes()
    i = pos % (len(old) + 1)
    if kind == "flip" and old:
        j = pos % len(old)
        new = old[:j] + bytes([old[j] ^ (data[0] or 0x80)]) + old[j + 1:]
    elif kind == "truncate":
        new = old[:i]
    elif kind == "insert":
        new = old[:i] + data + old[i:]
    else:
        new = data
    path.write_bytes(new)


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(mutation=mutations())
def test_any_bytes_in_a_ref_head_reflog_or_config_give_exit_0_or_one_clean_line(cli, repo_dir, committed,
                                                                                 tmp_path, mutation):
    target, kind, pos, data = mutation
    work = tmp_path / f"ex-{os.urandom(4).hex()}"
    shutil.copytree(repo_dir, work, symlinks=True)
    _mutate(gitdir(work) / target, kind, pos, data)
    for args in (["log"], ["status"], ["branch"], ["fsck"], ["commit", committed, "-m", "x", "--allow-empty"]):
        clean(cli(*args, cwd=work))
    shutil.rmtree(work)


def test_reflog_line_without_its_new_key_is_damage_not_a_crash():
    """Regression: a flipped byte turned "new" into another key; fsck died with KeyError: 'new' (exit 70)."""
    from mfgit.refs.refstore import ReflogEntry, parse_reflog_line

    good = b'{"message":"m","new":"' + b"a" * 64 + b'","old":null,"time":"2026-01-01T00:00:00Z","who":"w"}'
    assert isinstance(parse_reflog_line(good), ReflogEntry)
    assert parse_reflog_line(good.replace(b'"new"', b'"nfw"')) == "'new' is missing"
    assert parse_reflog_line(good.replace(b'"old"', b'"olx"')) == "'old' is missing"
