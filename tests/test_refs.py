"""The ref container contract, run against MemoryRefs and DiskRefs.

Refs change only by compare-and-swap under a lock (invariant 3): of several
writers racing from one old value exactly one wins; every change is in the
reflog, in order; names follow git's check-ref-format rules.
"""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from mfgit.errors import BadRef, BadReflog, InvalidRefName, LockHeld, RefConflict
from mfgit.refs import ANY, DiskRefs, MemoryRefs, ReflogBadLine, ReflogEntry, check_branch_name, check_ref_name
from mfgit.refs.names import check_remote_name

A, B, C, D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
REF = "refs/heads/sites/hospital-a"


@pytest.fixture(params=["memory", "disk"])
def refs(request, tmp_path):
    if request.param == "memory":
        return MemoryRefs()
    return DiskRefs(tmp_path / "gitdir")


# --- compare-and-swap -----------------------------------------------------------------


def test_expected_none_creates_only(refs):
    refs.update(REF, A, None)
    assert refs.read(REF) == A
    with pytest.raises(RefConflict) as info:
        refs.update(REF, B, None)
    assert str(info.value) == f"ref {REF} is at {A} but expected (nothing)"
    assert (info.value.name, info.value.actual, info.value.expected) == (REF, A, None)
    assert refs.read(REF) == A


def test_update_with_the_right_expected_value_succeeds(refs):
    refs.update(REF, A, None)
    refs.update(REF, B, A)
    assert refs.read(REF) == B
    assert refs.resolve(REF) == B


def test_wrong_expected_value_raises_ref_conflict_with_exact_message(refs):
    refs.update(REF, A, None)
    refs.update(REF, B, A)
    with pytest.raises(RefConflict) as info:
        refs.update(REF, C, A)
    assert str(info.value) == f"ref {REF} is at {B} but expected {A}"
    assert refs.read(REF) == B
    # A missing ref that was expected to exist.
    with pytest.raises(RefConflict) as info:
        refs.update("refs/heads/absent", C, A)
    assert str(info.value) == f"ref refs/heads/absent is at (nothing) but expected {A}"
    assert refs.read("refs/heads/absent") is None


def test_any_forces_the_update(refs):
    refs.update(REF, A, None)
    refs.update(REF, C, ANY)
    assert refs.read(REF) == C


def test_delete_is_compare_and_swap_too(refs):
    refs.update(REF, A, None)
    refs.update("refs/heads/main", B, None)
    with pytest.raises(RefConflict):
        refs.update(REF, None, B)
    assert refs.read(REF) == A
    refs.update(REF, None, A)
    assert refs.read(REF) is None
    assert refs.names("refs/") == ["refs/heads/main"]
    assert refs.items() == {"refs/heads/main": B}
    # The name can be created again, from nothing, with a fresh reflog.
    refs.update(REF, C, None)
    assert refs.read(REF) == C
    assert [(e.old, e.new) for e in refs.reflog(REF)] == [(None, C)]


def test_values_must_be_ids_or_symbolic(refs):
    for bad in ("not-an-id", "A" * 64, "a" * 63, ""):
        with pytest.raises(ValueError):
            refs.update(REF, bad, ANY)
    assert refs.read(REF) is None


def test_names_lists_refs_by_prefix(refs):
    refs.update("refs/heads/main", A, None)
    refs.update("refs/heads/sites/hospital-a", B, None)
    refs.update("refs/tags/v1", C, None)
    refs.update("refs/remotes/hub/main", D, None)
    assert refs.names("refs/heads/") == ["refs/heads/main", "refs/heads/sites/hospital-a"]
    assert refs.names("refs/tags/") == ["refs/tags/v1"]
    assert refs.names() == sorted(["refs/heads/main", "refs/heads/sites/hospital-a", "refs/tags/v1", "refs/remotes/hub/main"])


# --- symbolic HEAD -------------------------------------------------------------------------


def test_symbolic_head_follows_its_branch(refs):
    refs.set_symbolic("HEAD", "refs/heads/main")
    assert refs.read("HEAD") == "ref: refs/heads/main"
    assert refs.symbolic_target("HEAD") == "refs/heads/main"
    assert refs.resolve("HEAD") is None  # unborn branch
    refs.update("refs/heads/main", A, None)
    assert refs.resolve("HEAD") == A
    refs.update("refs/heads/main", B, A)
    assert refs.resolve("HEAD") == B
    # Re-pointing HEAD does not touch the branches.
    refs.update("refs/heads/dev", C, None)
    refs.set_symbolic("HEAD", "refs/heads/dev")
    assert refs.resolve("HEAD") == C
    assert refs.read("refs/heads/main") == B
    # Detaching: HEAD holds an id.
    refs.update("HEAD", D, ANY)
    assert refs.symbolic_target("HEAD") is None
    assert refs.resolve("HEAD") == D
    assert refs.read("refs/heads/dev") == C


def test_symbolic_target_must_be_a_valid_ref_name(refs):
    with pytest.raises(InvalidRefName):
        refs.set_symbolic("HEAD", "refs/heads/../../etc")


# --- reflog -----------------------------------------------------------------------------------


def test_reflog_records_every_change_in_order(refs):
    refs.update(REF, A, None, who="Ann <ann@x>", message="commit (initial): one")
    refs.update(REF, B, A, who="Ann <ann@x>", message="commit: two")
    with pytest.raises(RefConflict):
        refs.update(REF, C, A, who="Bob <bob@x>", message="lost race")
    refs.update(REF, C, ANY, who="Bob <bob@x>", message="branch: forced")
    refs.update(REF, A, C, who="Ann <ann@x>", message="reset")
    log = refs.reflog(REF)
    assert [(e.old, e.new, e.who, e.message) for e in log] == [
        (None, A, "Ann <ann@x>", "commit (initial): one"),
        (A, B, "Ann <ann@x>", "commit: two"),
        (B, C, "Bob <bob@x>", "branch: forced"),  # the failed CAS left no entry
        (C, A, "Ann <ann@x>", "reset"),
    ]
    times = [e.time for e in log]
    assert times == sorted(times)
    assert all(t.endswith("Z") for t in times)
    assert refs.reflog("refs/heads/other") == []


def test_deleting_a_ref_deletes_its_reflog(refs):
    refs.update(REF, A, None)
    refs.update(REF, B, A)
    refs.update(REF, None, B)
    assert refs.reflog(REF) == []
    if isinstance(refs, DiskRefs):
        assert not (refs.root / "logs" / REF).exists()


def test_detached_head_changes_are_logged(refs):
    refs.update("HEAD", A, ANY, message="checkout A")
    refs.update("HEAD", B, A, message="commit")
    assert [(e.old, e.new) for e in refs.reflog("HEAD")] == [(None, A), (A, B)]


def test_disk_reflog_survives_a_torn_last_line(tmp_path):
    refs = DiskRefs(tmp_path)
    refs.update(REF, A, None, message="one")
    refs.update(REF, B, A, message="two")
    log = tmp_path / "logs" / REF
    with open(log, "ab") as f:
        f.write(b'{"new": "cccc')  # a crash mid-append
    assert [e.message for e in refs.reflog(REF)] == ["one", "two"]
    # The next change is logged in full, not glued to the torn line.
    refs.update(REF, C, B, message="three")
    assert [(e.old, e.new, e.message) for e in refs.reflog(REF)][-1] == (B, C, "three")


# --- racing writers ---------------------------------------------------------------------------


@pytest.mark.parametrize("round_", range(10))
def test_racing_threads_exactly_one_wins(refs, round_):
    refs.update(REF, A, None)
    n = 8
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n
    values = [format(i + 1, "x") * 64 for i in range(n)]

    def worker(i: int) -> None:
        barrier.wait()
        try:
            refs.update(REF, values[i], A, message=f"writer {i}")
            results[i] = "won"
        except (RefConflict, LockHeld) as e:
            results[i] = e
        except BaseException as e:  # pragma: no cover - reported below
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in enumerate(results) if r == "won"]
    assert len(winners) == 1, results
    losers = [r for r in results if r != "won"]
    assert all(isinstance(r, (RefConflict, LockHeld)) for r in losers), losers
    assert refs.read(REF) == values[winners[0]]
    assert [(e.old, e.new) for e in refs.reflog(REF)] == [(None, A), (A, values[winners[0]])]
    if isinstance(refs, DiskRefs):
        assert refs.stale_locks() == []


def _process_writer(root: str, value: str, barrier, queue) -> None:
    refs = DiskRefs(root)
    barrier.wait()
    try:
        refs.update(REF, value, A, message=value[:4])
        queue.put((value, "won"))
    except RefConflict:
        queue.put((value, "RefConflict"))
    except LockHeld:
        queue.put((value, "LockHeld"))
    except BaseException as e:  # pragma: no cover - reported by the test
        queue.put((value, repr(e)))


def test_racing_processes_exactly_one_wins(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    n = 4
    for round_ in range(2):
        root = tmp_path / f"g{round_}"
        DiskRefs(root).update(REF, A, None)
        barrier = ctx.Barrier(n)
        queue = ctx.Queue()
        values = [format(round_ * n + i + 1, "x")[-1] * 64 for i in range(n)]
        procs = [ctx.Process(target=_process_writer, args=(str(root), v, barrier, queue)) for v in values]
        for p in procs:
            p.start()
        results = dict(queue.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        winners = [v for v, r in results.items() if r == "won"]
        assert len(winners) == 1, results
        assert all(r in ("RefConflict", "LockHeld") for v, r in results.items() if v not in winners), results
        refs = DiskRefs(root)
        assert refs.read(REF) == winners[0]
        assert [(e.old, e.new) for e in refs.reflog(REF)] == [(None, A), (A, winners[0])]
        assert refs.stale_locks() == []


def test_disk_lock_file_blocks_writers_until_removed(tmp_path):
    refs = DiskRefs(tmp_path)
    refs.update(REF, A, None)
    lock = tmp_path / (REF + ".lock")
    lock.write_text("")  # left by a killed process
    with pytest.raises(LockHeld) as info:
        refs.update(REF, B, A)
    assert str(lock) in str(info.value)
    assert refs.read(REF) == A
    assert refs.stale_locks() == [lock]
    assert refs.names() == [REF]  # the lock is not a ref
    lock.unlink()
    refs.update(REF, B, A)
    assert refs.read(REF) == B


def test_disk_ref_files_hold_the_value_and_a_newline(tmp_path):
    refs = DiskRefs(tmp_path)
    refs.update(REF, A, None)
    assert (tmp_path / REF).read_text() == A + "\n"
    refs.set_symbolic("HEAD", REF)
    assert (tmp_path / "HEAD").read_text() == f"ref: {REF}\n"
    assert not list(tmp_path.rglob("*.lock"))


# --- name validation -----------------------------------------------------------------------------

BAD_NAMES = [
    "../x", "a..b", "x.lock", "a/b.lock", "a\x01b", "a\x7fb", "a\tb", "a@{1}", "-x", "a//b", "a/", "a.", "@",
    "a b", "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\b", ".hidden", "a/.b", "", "/a",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_branch_names_are_rejected(name):
    with pytest.raises(InvalidRefName) as info:
        check_branch_name(name)
    assert info.value.name == name
    assert info.value.reason


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if n not in ("-x", "@", "", "/a")], ids=repr)
def test_ref_stores_refuse_invalid_names(refs, name):
    full = "refs/heads/" + name
    with pytest.raises(InvalidRefName):
        refs.update(full, A, None)
    assert refs.names() == []
    if isinstance(refs, DiskRefs):
        assert not [p for p in refs.root.rglob("*") if p.is_file()]


@pytest.mark.parametrize("name", ["@", "-x", "HEAD"])
def test_whole_name_rules(refs, name):
    with pytest.raises(InvalidRefName):
        check_branch_name(name)
    if name != "HEAD":
        with pytest.raises(InvalidRefName):
            refs.update(name, A, None)


@pytest.mark.parametrize("name", ["sites/hospital-a", "main", "v1.0", "release/2024-06", "a@b", "x.lockfile", "日本"])
def test_valid_names_are_accepted(refs, name):
    assert check_branch_name(name) == name
    assert check_ref_name("refs/heads/" + name) == "refs/heads/" + name
    refs.update("refs/heads/" + name, A, None)
    assert refs.read("refs/heads/" + name) == A


def test_full_ref_names_need_a_slash_and_remote_names_none():
    with pytest.raises(InvalidRefName):
        check_ref_name("main")
    assert check_ref_name("main", allow_onelevel=True) == "main"
    assert check_remote_name("hub") == "hub"
    with pytest.raises(InvalidRefName):
        check_remote_name("hub/x")


# --- damaged values, loops and reflog expiry ---------------------------------------------------------


def test_a_loop_of_symbolic_refs_is_a_bad_ref_not_an_unborn_branch(refs):
    refs.update("HEAD", "ref: refs/heads/a", ANY)
    refs.update("refs/heads/a", "ref: refs/heads/b", ANY)
    refs.update("refs/heads/b", "ref: refs/heads/a", ANY)
    with pytest.raises(BadRef) as info:
        refs.resolve("HEAD")
    assert info.value.name == "HEAD"
    assert info.value.reason == "symbolic refs form a loop: HEAD -> refs/heads/a -> refs/heads/b -> refs/heads/a"


def test_expire_reflog_drops_what_it_is_told_and_keeps_the_rest_in_order(refs):
    refs.update(REF, A, None, message="one")
    refs.update(REF, B, A, message="two")
    refs.update(REF, C, B, message="three")
    assert refs.expire_reflog(REF, lambda e: isinstance(e, ReflogEntry) and e.new == B) == (1, 2)
    assert [(e.old, e.new, e.message) for e in refs.reflog(REF)] == [(None, A, "one"), (B, C, "three")]
    assert refs.read(REF) == C  # the ref itself is untouched
    refs.update(REF, D, C, message="four")
    assert [e.message for e in refs.reflog(REF)] == ["one", "three", "four"]
    assert REF in refs.reflog_names()
    assert refs.expire_reflog(REF, lambda e: True) == (3, 0)
    assert refs.reflog(REF) == [] and REF not in refs.reflog_names()


@pytest.mark.parametrize("content", [b"garbage\n", b"a" * 63 + b"\n", b"\xff" * 64 + b"\n", b"", b"ref: ../x\n",
                                     b"ref: logs/HEAD\n", b"a" * 64 * 100])
def test_disk_ref_files_that_hold_no_value_are_bad_refs_naming_the_file(tmp_path, content):
    refs = DiskRefs(tmp_path)
    refs.update(REF, A, None)
    (tmp_path / REF).write_bytes(content)
    with pytest.raises(BadRef) as info:
        refs.read(REF)
    assert info.value.name == REF and info.value.path == str(tmp_path / REF)
    assert refs.items() == {}  # left out of listings; fsck reports it
    with pytest.raises(BadRef):
        refs.update(REF, B, A)  # a compare needs the value
    refs.update(REF, B, ANY)  # a forced update repairs it
    assert refs.read(REF) == B


def test_disk_reflog_lines_that_are_no_entry_are_reported_with_their_line(tmp_path):
    refs = DiskRefs(tmp_path)
    refs.update(REF, A, None, message="one")
    refs.update(REF, B, A, message="two")
    log = tmp_path / "logs" / REF
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(lines[0] + b'{"old": "not an id", "new": null, "who": "", "time": "", "message": ""}\n' + lines[1])
    entries, bad = refs.reflog_scan(REF)
    assert [e.message for e in entries] == ["one", "two"]
    assert bad == [ReflogBadLine(2, "'old' is not an object id")]
    with pytest.raises(BadReflog) as info:
        refs.reflog(REF)
    assert (info.value.line, info.value.path) == (2, str(log))
    assert refs.expire_reflog(REF, lambda item: isinstance(item, ReflogBadLine)) == (1, 2)
    assert [e.message for e in refs.reflog(REF)] == ["one", "two"]


def test_disk_reflog_strings_that_are_not_valid_unicode_are_damaged_lines(tmp_path):
    refs = DiskRefs(tmp_path)
    refs.update(REF, A, None, message="one")
    log = tmp_path / "logs" / REF
    log.write_bytes(log.read_bytes().replace(b'"one"', b'"\\ud800"'))
    assert refs.reflog_scan(REF) == ([], [ReflogBadLine(1, "'message' is not valid Unicode")])
