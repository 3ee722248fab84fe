"""gc and the kept copies of private attachments (``.mfgit/private/<sha256>``), through the real `mfgit`
command: a copy no reachable commit names goes once it is older than the grace period, by the same
rules, lock and refusals as objects (docs/design.md, "gc and fsck").

The bug: gc never swept private/, so the private bytes of a deleted commit stayed on disk for ever."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from mfgit.api.repository import Repository

KEPT = b"rows the site keeps: " + bytes(range(256)) * 4
GONE = b"rows of a commit that is deleted: " + bytes(range(255, -1, -1)) * 4


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def private_dir(repo_dir: Path) -> Path:
    return repo_dir / ".mfgit" / "private"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def attachment(cli, repo_dir: Path, rev: str, name: str) -> bytes:
    out = repo_dir.parent / "attachment.out"
    cli.ok("attachments", rev, name, "-o", out, cwd=repo_dir)
    return out.read_bytes()


def age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past), follow_symlinks=False)


def age_everything(repo_dir: Path, seconds: float) -> None:
    """Every object file and every file in private/ back-dated, so that only reachability decides."""
    for root in (repo_dir / ".mfgit" / "objects", private_dir(repo_dir)):
        for p in root.rglob("*"):
            if p.is_file():
                age(p, seconds)


@pytest.fixture
def two_copies(cli, repo_dir, adapter_dir, tmp_path):
    """main names KEPT; branch x's commit names KEPT and GONE. Returns x's commit id."""
    kept, gone = write(tmp_path / "kept.bin", KEPT), write(tmp_path / "gone.bin", GONE)
    cli.ok("commit", adapter_dir("a", seed=1), "-m", "kept", "--attach-private", f"rows.bin={kept}", cwd=repo_dir)
    cli.ok("switch", "-c", "x", cwd=repo_dir)
    x = cli.json("commit", adapter_dir("b", seed=2), "-m", "to delete", "--json",
                 "--attach-private", f"rows.bin={kept}", "--attach-private", f"more.bin={gone}", cwd=repo_dir)["id"]
    cli.ok("switch", "main", cwd=repo_dir)
    assert (private_dir(repo_dir) / sha(GONE)).read_bytes() == GONE
    return x


def test_gc_deletes_a_private_copy_no_reachable_commit_names_once_older_than_the_grace_period(
        cli, repo_dir, two_copies):
    cli.ok("branch", "-D", "x", cwd=repo_dir)  # its reflog goes with it
    kept, gone = private_dir(repo_dir) / sha(KEPT), private_dir(repo_dir) / sha(GONE)
    # Young: the default grace period (2 weeks) keeps it.
    report = cli.json("gc", "--json", cwd=repo_dir)
    assert report["private_deleted"] == 0 and report["private_kept_young"] == 1 and gone.exists()
    age_everything(repo_dir, 15 * 86400)
    # A dry run names it and deletes nothing.
    dry = cli.json("gc", "--dry-run", "--json", cwd=repo_dir)
    assert dry["private_deleted_digests"] == [sha(GONE)] and dry["private_bytes_freed"] == len(GONE)
    assert gone.exists() and dry["deleted"] > 0 and all(
        (repo_dir / ".mfgit" / "objects" / o[:2] / o[2:]).exists() for o in dry["deleted_ids"])
    assert "Would delete 1 private attachment file(s)" in cli.ok("gc", "--dry-run", cwd=repo_dir).stdout
    # Older than the grace period: deleted, counted apart from the objects.
    report = cli.json("gc", "--json", cwd=repo_dir)
    assert report["private_deleted"] == 1 and report["private_deleted_digests"] == [sha(GONE)]
    assert report["private_bytes_freed"] == len(GONE) and report["private_kept_young"] == 0
    assert sha(GONE) not in report["deleted_ids"] and report["deleted"] == len(dry["deleted_ids"])
    assert not gone.exists()
    # The copy main's commit names stays, however old: shared with the deleted commit, still named.
    assert kept.read_bytes() == KEPT
    assert attachment(cli, repo_dir, "HEAD", "rows.bin") == KEPT
    fsck = cli.json("fsck", "--json", cwd=repo_dir)
    assert fsck["ok"] and fsck["private_attachments_absent"] == []
    # Nothing left to sweep: the text report says nothing of private copies.
    out = cli.ok("gc", "--prune=now", cwd=repo_dir).stdout
    assert "Deleted 0 unreachable object(s)" in out and "private" not in out


def test_a_private_copy_named_by_a_reflog_entry_only_is_kept_until_the_entry_is_dropped(
        cli, repo_dir, two_copies):
    cli.ok("branch", "-f", "x", "main", cwd=repo_dir)  # x's old commit: in x's reflog only
    age_everything(repo_dir, 30 * 86400)
    gone = private_dir(repo_dir) / sha(GONE)
    report = cli.json("gc", "--prune=now", "--json", cwd=repo_dir)
    assert report["private_deleted"] == 0 and report["private_kept_young"] == 0 and gone.exists()
    assert attachment(cli, repo_dir, two_copies, "more.bin") == GONE
    cli.ok("reflog", "expire", "--all", "--older-than", "now", cwd=repo_dir)
    report = cli.json("gc", "--prune=now", "--json", cwd=repo_dir)
    assert report["private_deleted_digests"] == [sha(GONE)] and not gone.exists()
    assert (private_dir(repo_dir) / sha(KEPT)).exists()


def test_files_in_private_not_named_like_a_digest_are_left_alone(cli, repo_dir, two_copies):
    cli.ok("branch", "-D", "x", cwd=repo_dir)
    d = private_dir(repo_dir)
    others = [write(d / "notes.txt", b"a person's file"), write(d / f".tmp-{sha(GONE)[:16]}", b"half"),
              write(d / sha(b"upper").upper(), b"upper"), write(d / (sha(b"long") + "0"), b"long")]
    (d / sha(b"a folder")).mkdir()
    os.symlink(d / "notes.txt", d / sha(b"a link"))
    age_everything(repo_dir, 30 * 86400)
    report = cli.json("gc", "--prune=now", "--json", cwd=repo_dir)
    assert report["private_deleted_digests"] == [sha(GONE)] and report["private_kept_young"] == 0
    assert all(p.exists() for p in others) and (d / sha(b"a folder")).is_dir() and (d / sha(b"a link")).is_symlink()


def _bad_ref(repo_dir: Path) -> None:
    (repo_dir / ".mfgit" / "refs" / "heads" / "garbage").write_text("not an id\n")


def _damaged_reflog_line(repo_dir: Path) -> None:
    with open(repo_dir / ".mfgit" / "logs" / "refs" / "heads" / "main", "ab") as f:
        f.write(b"\xff not an entry\n")


def _missing_reachable_object(repo_dir: Path) -> None:
    repo = Repository.open(repo_dir)
    aid = repo.read_commit(repo.head()).adapter
    tid = repo.read_adapter(aid).tensor_ids()[0]
    os.unlink(repo_dir / ".mfgit" / "objects" / tid[:2] / tid[2:])


@pytest.mark.parametrize("damage", [_bad_ref, _damaged_reflog_line, _missing_reachable_object],
                         ids=["bad-ref", "damaged-reflog-line", "missing-object"])
def test_gc_refusing_on_damaged_history_deletes_no_private_copy(cli, repo_dir, two_copies, damage):
    cli.ok("branch", "-D", "x", cwd=repo_dir)
    age_everything(repo_dir, 30 * 86400)
    damage(repo_dir)
    before = sorted(p.name for p in private_dir(repo_dir).iterdir())
    assert sha(GONE) in before
    cli.fails("gc", "--prune=now", cwd=repo_dir, code=5)
    assert sorted(p.name for p in private_dir(repo_dir).iterdir()) == before


def test_committing_private_bytes_again_freshens_their_old_copy(cli, repo_dir, adapter_dir, tmp_path):
    """A commit that reuses a kept copy renews its mtime, as a reused object's, so that gc's grace period
    counts from the reuse for writers the lock cannot see."""
    rows = write(tmp_path / "rows.bin", GONE)
    cli.ok("commit", adapter_dir("a", seed=3), "-m", "one", "--attach-private", f"rows.bin={rows}", cwd=repo_dir)
    copy = private_dir(repo_dir) / sha(GONE)
    age(copy, 30 * 86400)
    cli.ok("commit", adapter_dir("b", seed=4), "-m", "two", "--attach-private", f"again.bin={rows}", cwd=repo_dir)
    assert time.time() - copy.stat().st_mtime < 600 and copy.read_bytes() == GONE


def test_a_private_folder_that_cannot_be_listed_stops_gc_before_any_object_is_deleted(cli, repo_dir, two_copies):
    """Listed after the objects were deleted, a broken private/ failed gc half way, on every later run."""
    cli.ok("branch", "-D", "x", cwd=repo_dir)
    age_everything(repo_dir, 15 * 86400)
    doomed = cli.json("gc", "--dry-run", "--json", cwd=repo_dir)["deleted_ids"]
    assert doomed
    private = private_dir(repo_dir)
    private.rename(repo_dir / "private.aside")
    private.write_bytes(b"not a folder")
    line = cli.fails("gc", "--prune=now", cwd=repo_dir)
    assert "private" in line
    assert all((repo_dir / ".mfgit" / "objects" / o[:2] / o[2:]).exists() for o in doomed)
