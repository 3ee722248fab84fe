"""Every crash point of push, fetch, gc and merge: a real `mfgit` killed there leaves nothing half done.

`mfgit.repo.crash.POINTS` lists each point the code has (name → operation);
the first test reads the source and checks that the names passed to
`crashpoint()` are exactly the table's. One test per operation is then
generated from the table: it runs the real command with MFGIT_CRASH_AT set
to the point, so that the process SIGKILLs itself there, and checks that

- `mfgit fsck` exits 0 (leftovers and dangling objects are allowed, damage is not);
- every ref the operation moves is at its old value or at its new one, never
  anything else (objects before refs), and no lock file is left behind;
- no temporary file is left where the operation wrote whole objects only;
- the same command run again succeeds and finishes the job.

Push and fetch run against a folder remote, push also once against S3
(SeaweedFS). The commit's points are tested in tests/test_safety.py,
generated from the same table; random-moment kills of commit, push and fetch
are there and in tests/test_remote_sync.py.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import signal
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

import mfgit
from mfgit.api import notes as notes_api
from mfgit.api.repository import Repository
from mfgit.repo.crash import ENV, OPERATIONS, POINTS, points_of
from tests.conftest import Cli, build_adapter, isolated_env
from tests.test_remote_sync import Remote, all_objects, derive_adapter, in_process_env, s3_env

try:
    from tests.seaweed import seaweed  # noqa: F401  (session fixture)
except ImportError:  # pragma: no cover - tests/ itself on sys.path
    from seaweed import seaweed  # noqa: F401


# --- the table is the code's ---------------------------------------------------------------------


def crashpoint_calls() -> dict[str, list[str]]:
    """name → where: every `crashpoint("name")` call in the mfgit package, found by parsing the source."""
    found: dict[str, list[str]] = {}
    root = Path(mfgit.__file__).parent
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "crashpoint":
                assert len(node.args) == 1 and isinstance(node.args[0], ast.Constant), \
                    f"{path}:{node.lineno}: crashpoint() takes one literal name"
                found.setdefault(node.args[0].value, []).append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_crash_points_in_the_code_are_exactly_the_table():
    calls = crashpoint_calls()
    assert sorted(calls) == sorted(POINTS), {"not in POINTS": sorted(set(calls) - set(POINTS)),
                                             "not in the code": sorted(set(POINTS) - set(calls))}
    assert all(len(where) == 1 for where in calls.values()), {n: w for n, w in calls.items() if len(w) > 1}
    assert set(POINTS.values()) == set(OPERATIONS)
    # The expectations of the generated tests cover every point of their operation.
    assert set(PUSH_MOVED) == set(points_of("push")) and set(FETCH_MOVED) == set(points_of("fetch"))


# --- helpers ---------------------------------------------------------------------------------------


def killed_at(cli: Cli, point: str, *args, cwd: Path) -> None:
    """Run `mfgit ARGS` with the crash point armed; it must die there."""
    res = cli.with_env(**{ENV: point})(*args, cwd=cwd)
    assert res.returncode == -signal.SIGKILL, (point, res.returncode, res.stderr)


def fsck_clean(cli: Cli, repo: Path, *, temporary: bool = False) -> dict:
    """`mfgit fsck` exits 0 and finds no lock; with `temporary` False, no temporary file either."""
    res = cli("fsck", "--json", cwd=repo)
    assert "Traceback" not in res.stderr, res.stderr
    report = json.loads(res.stdout)
    assert res.returncode == 0 and report["ok"], report
    assert report["stale_locks"] == [], report["stale_locks"]
    if not temporary:
        assert report["temporary_files"] == [], report["temporary_files"]
    return report


def sound(repo: Path) -> None:
    """After the re-run: no damage, every byte read (in-process, to spare a process start)."""
    report = Repository.open(repo).fsck(read_data=True)
    assert report["ok"] and report["stale_locks"] == [], report


def ref(repo: Path, name: str) -> str | None:
    return Repository.open(repo).refs.read(name)


def one_of(value, old, new, what: str) -> str:
    """`value` is the old or the new value of `what`; returns which."""
    assert value in (old, new), f"{what} is at {value}, neither the old {old} nor the new {new}"
    return "new" if value == new and new != old else "old"


def add_note(repo_dir: Path, rev: str, name: str) -> None:
    repo = Repository.open(repo_dir)
    notes_api.add_notes(repo, [notes_api.make_note(repo, repo.resolve(rev), name, {"score": 0.5})])
    repo.store.close()


def remote_notes(remote: Remote) -> str | None:
    with remote.transport() as t:
        got = t.get_versioned("refs/notes/metrics")
    return got[0].decode().strip() if got else None


def repoint(site: Path, name: str, url: str) -> None:
    """Point remote `name` at `url`, keeping its remote-tracking refs (a copy of the remote it had)."""
    Repository.open(site).config.repo.set(f"remote.{name}.url", url)


def copy_repo(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


# --- push ------------------------------------------------------------------------------------------

PUSH_MOVED = {  # which refs have moved when the push dies at each point
    "push-after-tensors": set(),
    "push-before-ref": set(),
    "push-after-ref": {"remote main"},
    "push-notes-before-ref": {"remote main", "tracking"},
}
PUSH_CASES = [("folder", p) for p in points_of("push")] + [pytest.param("s3", "push-before-ref", marks=pytest.mark.s3)]


@pytest.fixture(scope="module")
def env_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash-points")
    env = isolated_env(root / "home", AWS_PROFILE=None, **{ENV: None})
    with in_process_env(env):
        yield SimpleNamespace(root=root, env=env)


@pytest.fixture(scope="module")
def push_template(env_root, adapter_store):
    """A site whose main (c2, one new tensor and a new note) is one commit ahead of a folder remote's (c1)."""
    root = env_root.root / "push"
    one = build_adapter(adapter_store, seed=1)
    two = derive_adapter(one, root / "adapter-two")
    remote = Repository.init(root / "hub", bare=True)
    remote.store.close()
    site = Repository.init(root / "site", site="a")
    site.remote_add("hub", str(root / "hub"))
    c1 = site.commit(one, "base").id
    site.store.close()
    add_note(root / "site", c1, "val-1")
    site = Repository.open(root / "site")
    site.push("hub", ["main"])
    site.push_notes("hub")
    c2 = site.commit(two, "one tensor changed").id
    site.store.close()
    add_note(root / "site", c2, "val-2")
    return SimpleNamespace(site=root / "site", hub=root / "hub", c1=c1, c2=c2)


@pytest.mark.parametrize("kind, point", PUSH_CASES)
def test_push_killed_at_each_crash_point_leaves_both_sides_sound(env_root, push_template, tmp_path, request,
                                                                 kind, point):
    t = push_template
    site = copy_repo(t.site, tmp_path / "site")
    cli = Cli(env_root.root / "home", site, env_root.env)
    if kind == "folder":
        hub = copy_repo(t.hub, tmp_path / "hub")
        remote = Remote("folder", str(hub), path=hub)
        repoint(site, "hub", str(hub))
    else:
        server = request.getfixturevalue("seaweed")
        cli = Cli(cli.home, site, {**env_root.env, **s3_env(server, cli.home)})
        prefix = f"crash-{uuid.uuid4().hex[:10]}"
        bucket = server.make_bucket(f"crash-{uuid.uuid4().hex[:6]}")
        remote = Remote("s3", f"s3://{bucket}/{prefix}", bucket=bucket, prefix=prefix, s3=server.s3_options())
        repoint(site, "hub", remote.url)
        cli.ok("push", "-q", "--create", "--notes", "hub", f"{t.c1}:main", cwd=site)
    with in_process_env(cli.env):
        notes_before = remote_notes(remote)
        before = remote.object_ids()
    assert remote.ref() == t.c1

    killed_at(cli, point, "push", "-q", "--notes", "hub", "main", cwd=site)

    with in_process_env(cli.env):
        moved = set()
        if one_of(remote.ref(), t.c1, t.c2, "the remote's main") == "new":
            moved.add("remote main")
        if one_of(ref(site, "refs/remotes/hub/main"), t.c1, t.c2, "hub/main") == "new":
            moved.add("tracking")
        assert remote_notes(remote) == notes_before, "the remote's notes ref moved before the swap"
        assert moved == PUSH_MOVED[point], moved
        arrived = remote.object_ids() - before
    fsck_clean(cli, site)
    if kind == "folder":
        fsck_clean(cli, hub)
    else:  # the S3 remote's branch is at a complete commit: a clone of it fscks clean
        clone = tmp_path / "clone-after-kill"
        cli.ok("clone", "-q", remote.url, clone, cwd=tmp_path)
        fsck_clean(cli, clone)
        assert ref(clone, "refs/remotes/origin/main") == t.c1
    needed = all_objects(site, t.c2) - all_objects(site, t.c1)
    if point == "push-after-tensors":  # the new tensor, not its adapter or commit
        assert arrived and arrived < needed and t.c2 not in arrived
    else:  # every object is there
        assert arrived >= needed

    again = cli.json("push", "--notes", "hub", "main", "--json", cwd=site)
    if point != "push-after-tensors":
        assert again["objects"] == 0, again  # everything had arrived: nothing is sent twice
    with in_process_env(cli.env):
        assert remote.ref() == t.c2 and ref(site, "refs/remotes/hub/main") == t.c2
        assert remote_notes(remote) == ref(site, "refs/notes/metrics")
    if kind == "folder":
        sound(hub)
    else:  # the S3 remote is whole: a fresh clone has every object and fscks clean
        clone = tmp_path / "clone"
        cli.ok("clone", "-q", remote.url, clone, cwd=tmp_path)
        fsck_clean(cli, clone)
        assert ref(clone, "refs/remotes/origin/main") == t.c2


# --- fetch -----------------------------------------------------------------------------------------

FETCH_MOVED = {  # which remote-tracking refs have moved when the fetch dies at each point
    "fetch-after-tensors": set(),
    "fetch-before-refs": set(),
    "fetch-between-refs": {"dev"},  # refs move in name order: dev, then main
    "fetch-notes-before-ref": {"dev", "main"},
}


@pytest.fixture(scope="module")
def fetch_template(env_root, adapter_store):
    """A folder remote whose main and dev are one commit each (new tensors, new notes) ahead of a clone's."""
    root = env_root.root / "fetch"
    one = build_adapter(adapter_store, seed=1)
    Repository.init(root / "hub", bare=True).store.close()
    a = Repository.init(root / "a", site="a")
    a.remote_add("hub", str(root / "hub"))
    c1 = a.commit(one, "base").id
    a.create_branch("dev")
    a.push("hub", ["main", "dev"])
    a.store.close()
    add_note(root / "a", c1, "val-1")
    Repository.open(root / "a").push_notes("hub")
    Repository.clone(str(root / "hub"), root / "b").store.close()
    Repository.open(root / "b").fetch_notes("origin")
    a = Repository.open(root / "a")
    main = a.commit(derive_adapter(one, root / "adapter-main"), "main moves").id
    a.switch("dev")
    dev = a.commit(derive_adapter(one, root / "adapter-dev", change=2), "dev moves").id
    a.push("hub", ["main", "dev"])
    a.store.close()
    add_note(root / "a", main, "val-2")
    Repository.open(root / "a").push_notes("hub")
    return SimpleNamespace(b=root / "b", hub=root / "hub", old=c1, new={"main": main, "dev": dev})


@pytest.mark.parametrize("point", points_of("fetch"))
def test_fetch_killed_at_each_crash_point_leaves_the_repository_sound(env_root, fetch_template, tmp_path, point):
    t = fetch_template
    b = copy_repo(t.b, tmp_path / "b")
    cli = Cli(env_root.root / "home", b, env_root.env)
    notes_before = ref(b, "refs/notes/metrics")

    killed_at(cli, point, "fetch", "-q", "--notes", "origin", cwd=b)

    moved = {name for name, new in t.new.items()
             if one_of(ref(b, f"refs/remotes/origin/{name}"), t.old, new, f"origin/{name}") == "new"}
    assert moved == FETCH_MOVED[point], moved
    assert ref(b, "refs/notes/metrics") == notes_before
    fsck_clean(cli, b)

    cli.ok("fetch", "-q", "--notes", "origin", cwd=b)
    for name, new in t.new.items():
        assert ref(b, f"refs/remotes/origin/{name}") == new
    assert ref(b, "refs/notes/metrics") == ref(t.hub, "refs/notes/metrics")
    sound(b)


# --- gc --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gc_template(env_root, adapter_store):
    """main at one commit; a deleted branch's commit, adapter and tensors unreachable, and its two private
    copies no commit names any more; a killed commit's batch."""
    root = env_root.root / "gc"
    cli = Cli(env_root.root / "home", root, env_root.env)
    repo = Repository.init(root / "repo")
    rows = {n: root / "in" / n for n in ("kept.bin", "gone-1.bin", "gone-2.bin")}
    for n, p in rows.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"private rows {n}".encode() * 64)
    main = repo.commit(build_adapter(adapter_store, seed=1), "kept",
                       private_attachments={"kept.bin": rows["kept.bin"]}).id
    repo.switch("gone", create=True)
    gone = repo.commit(build_adapter(adapter_store, seed=3), "to be collected",
                       private_attachments={n: rows[n] for n in ("gone-1.bin", "gone-2.bin")})
    private = {a["name"]: a["digest"] for a in gone.commit.attachments}
    unreachable = {gone.id, gone.commit.adapter, *repo.read_adapter(gone.commit.adapter).referenced_ids()}
    unreachable -= {o for o in repo.store.iter_ids() if o in _objects_of(repo, main)}
    repo.switch("main")
    repo.delete_branch("gone", force=True)
    repo.store.close()
    killed_at(cli, "after-tensors", "commit", derive_adapter(build_adapter(adapter_store, seed=1), root / "three"),
              "-m", "killed", cwd=root / "repo")
    return SimpleNamespace(repo=root / "repo", main=main, unreachable=unreachable,
                           private_kept=_digest_of(rows["kept.bin"]),
                           private_gone={private["gone-1.bin"], private["gone-2.bin"]})


def _digest_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _private_copies(repo_dir: Path) -> set[str]:
    return {p.name for p in (repo_dir / ".mfgit" / "private").iterdir()}


def _objects_of(repo, cid: str) -> set[str]:
    aid = repo.read_commit(cid).adapter
    return {cid, aid, *repo.read_adapter(aid).referenced_ids()}


@pytest.mark.parametrize("point", points_of("gc"))
def test_gc_killed_at_each_crash_point_deletes_only_the_unreachable(env_root, gc_template, tmp_path, point):
    t = gc_template
    repo_dir = copy_repo(t.repo, tmp_path / "repo")
    cli = Cli(env_root.root / "home", repo_dir, env_root.env)
    assert len(t.unreachable) >= 3 and t.unreachable <= set(Repository.open(repo_dir).store.iter_ids())

    killed_at(cli, point, "gc", "--prune=now", cwd=repo_dir)

    left = set(Repository.open(repo_dir).store.iter_ids())
    if point == "gc-during-delete":
        assert 0 < len(t.unreachable - left) < len(t.unreachable)
    else:
        assert not t.unreachable & left
    # Objects first, then the private copies no commit names, one at a time.
    private_left = _private_copies(repo_dir) & t.private_gone
    assert len(private_left) == {"gc-during-delete": 2, "gc-during-private-delete": 1}.get(point, 0)
    assert t.private_kept in _private_copies(repo_dir)
    assert ref(repo_dir, "refs/heads/main") == t.main
    report = fsck_clean(cli, repo_dir, temporary=True)  # gc had not yet removed the killed commit's batch
    assert report["temporary_files"]

    cli.ok("gc", "--prune=now", cwd=repo_dir)
    repo = Repository.open(repo_dir)
    assert not t.unreachable & set(repo.store.iter_ids())
    assert _objects_of(repo, t.main) <= set(repo.store.iter_ids())
    assert _private_copies(repo_dir) == {t.private_kept}
    assert repo.store.temp_files() == []
    sound(repo_dir)


# --- merge -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def merge_template(env_root, adapter_store):
    """sites/a and sites/b, one adapter each; main at a's commit, where the coordinator merges."""
    root = env_root.root / "merge"
    repo = Repository.init(root / "repo", site="coordinator")
    for s, seed in (("a", 11), ("b", 12)):
        repo.switch(f"sites/{s}", orphan=True)
        repo.config.repo.set("user.site", s)
        repo.commit(build_adapter(adapter_store, seed=seed), f"site {s}")
    repo.config.repo.set("user.site", "coordinator")
    repo.switch("main", create=True, start="sites/a")
    old = repo.head()
    repo.store.close()
    return SimpleNamespace(repo=root / "repo", old=old)


@pytest.mark.parametrize("point", points_of("merge"))
def test_merge_killed_at_each_crash_point_leaves_the_branch_whole(env_root, merge_template, tmp_path, point):
    t = merge_template
    repo_dir = copy_repo(t.repo, tmp_path / "repo")
    cli = Cli(env_root.root / "home", repo_dir, env_root.env)
    args = ("merge", "sites/a", "sites/b", "--weights", "0.5,0.5", "--rank", "sum", "-m", "composite")

    killed_at(cli, point, *args, cwd=repo_dir)

    assert ref(repo_dir, "refs/heads/main") == t.old  # no point of a merge is past its ref move
    report = fsck_clean(cli, repo_dir)
    dangling = {d["id"] for d in report["dangling"] if d["kind"] == "adapter"}

    # The same merge again (in-process, where torch is loaded already: the
    # command's own run is the one killed above).
    repo = Repository.open(repo_dir)
    done = repo.merge(["sites/a", "sites/b"], weights=[0.5, 0.5], rank="sum", message="composite")
    repo.store.close()
    assert repo.head() == done.commit and repo.read_commit(done.commit).parents[0] == t.old
    if point == "merge-before-adapter":
        assert not dangling
    else:  # the killed merge had stored the very adapter the re-run made (merges are deterministic)
        assert done.adapter in dangling
    sound(repo_dir)
