"""Remotes from the user's side, through the real `mfgit` command: URL
validation, nothing executed, clear one-line errors for remotes that cannot
be used (and no secret in any output), credentials kept out of every file,
and the collaboration habits (init --site, branch -r, log A..B, pull,
clone, remote -v / remove, --json summaries) over a folder and a real S3
server (SeaweedFS, no mocks)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from mfgit.api.repository import Repository
from tests.conftest import one_line_error
from tests.seaweed import free_ports
from tests.test_remote_sync import Remote, World, fsck_ok, head, in_process_env, make_world, tracking

try:
    from tests.seaweed import seaweed  # noqa: F401  (session fixture)
except ImportError:  # pragma: no cover
    from seaweed import seaweed  # noqa: F401


@pytest.fixture(scope="module")
def world(tmp_path_factory, seaweed, adapter_store):
    root = tmp_path_factory.mktemp("remote-cli")
    w = make_world(root, seaweed, adapter_store, "cli")
    with in_process_env(w.cli.env):
        yield w


@pytest.fixture(scope="module")
def site(world) -> Path:
    """A site with one commit, for commands that only need a repository."""
    path = world.site("plain")
    world.commit(path, "one", "base")
    return path


def no_secret(world: World, *texts: str) -> None:
    for text in texts:
        assert world.seaweed.secret_key not in text
        assert "hunter2" not in text


# -- URLs are validated; nothing in them is executed -----------------------------------------------


BAD_URLS = [
    ("http://example.org/hub", "http: remotes are not supported"),
    ("ssh://host/srv/hub", "ssh: remotes are not supported"),
    ("git@host:srv/hub", "ssh remotes"),
    ("s3://Bad_Bucket/x", "invalid bucket name"),
    ("s3://ab", "invalid bucket name"),
    ("s3://bucket/a/../b", "'..' segment"),
    ("s3://AKIAXXX:hunter2@bucket/x", "credentials never go in URLs"),
    ("https://user:hunter2@example.org/hub", "credentials never go in URLs"),
    ("file://otherhost/srv/hub", "with a host"),
]


@pytest.mark.parametrize("url,why", BAD_URLS, ids=[u for u, _ in BAD_URLS])
def test_invalid_remote_urls_are_refused(world, site, url, why):
    res = world.cli("remote", "add", "bad", url, cwd=site)
    assert res.returncode == 4, res.stderr
    line = one_line_error(res.stderr)
    assert "invalid remote URL" in line and why in line, line
    no_secret(world, res.stdout, res.stderr)
    assert Repository.open(site).config.get("remote.bad.url") is None


@pytest.mark.parametrize("url", ["http://example.org/hub", "s3://Bad_Bucket/x", "https://user:hunter2@h/x"])
def test_clone_and_push_refuse_invalid_urls(world, site, url):
    target = world.fresh("clone")
    res = world.cli("clone", url, target)
    assert res.returncode == 4 and "invalid remote URL" in one_line_error(res.stderr)
    assert not target.exists()
    res = world.cli("push", url, "main", cwd=site)
    assert res.returncode == 4 and "invalid remote URL" in one_line_error(res.stderr)
    no_secret(world, res.stderr)


def test_nothing_in_a_url_or_path_is_executed(world, tmp_path):
    """Shell syntax in a folder name or an S3 prefix is just characters."""
    evil = "$(touch pwned1) `touch pwned2`; touch pwned3 && x"
    cli = world.cli.at(tmp_path)
    cli.ok("init", "--bare", evil)
    a = world.site("a")
    world.commit(a, "one", "base")
    cli.ok("remote", "add", "hub", str(tmp_path / evil), cwd=a)
    pushed = cli.json("push", "hub", "--json", cwd=a)
    assert pushed["objects"] > 0
    cli.ok("clone", "-q", evil, "copy")
    assert head(tmp_path / "copy") == head(a)
    s3_url = f"s3://{world.bucket}/{evil}/hub"
    cli.ok("remote", "add", "s3hub", s3_url, cwd=a)
    cli.ok("push", "-q", "--create", "s3hub", cwd=a)
    with Remote("s3", s3_url, s3=world.seaweed.s3_options()).transport() as t:
        assert t.get("refs/heads/main").decode().strip() == head(a)
    for where in (tmp_path, a, Path.cwd(), world.root):
        assert not [p for p in os.listdir(where) if p.startswith("pwned")], where
    assert sorted(os.listdir(tmp_path)) == sorted([evil, "copy"])


# -- remotes that cannot be used: one line, no traceback, no secret ----------------------------------


def test_unusable_remotes_give_one_clear_line(world, site):
    sw = world.seaweed
    closed = f"http://127.0.0.1:{free_ports(1)[0]}"
    repo = Repository.open(site)
    repo.remote_add("s3hub", f"s3://{world.bucket}/unusable-{uuid.uuid4().hex[:6]}")
    repo.remote_add("nobucket", "s3://no-such-bucket-mfgit/x")
    repo.remote_add("gone", str(world.root / "no" / "such" / "folder"))
    (world.root / "empty-folder").mkdir()
    repo.remote_add("empty", str(world.root / "empty-folder"))
    wrong = "wrong-" + uuid.uuid4().hex
    repo.push("s3hub", create=True)

    cases = [
        # (command, environment changes, exit code, words in the line)
        (("fetch", "s3hub"), {"AWS_ENDPOINT_URL": closed}, 6, ["cannot reach", "connection refused"]),
        (("fetch", "nobucket"), {}, 6, ["bucket no-such-bucket-mfgit does not exist"]),
        (("push", "nobucket"), {}, 6, ["bucket no-such-bucket-mfgit does not exist"]),
        (("fetch", "s3hub"), {"AWS_SECRET_ACCESS_KEY": wrong}, 6, ["secret access key does not match"]),
        (("fetch", "s3hub"), {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000000"}, 6, ["access key id"]),
        (("fetch", "s3hub"), {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, 6, ["no AWS credentials"]),
        (("fetch", "gone"), {}, 6, ["the folder does not exist", "mfgit init --bare"]),
        (("fetch", "empty"), {}, 6, ["is not an mfgit remote (the folder is empty)", "mfgit init --bare"]),
        (("push", "empty"), {}, 6, ["is not an mfgit remote (the folder is empty)", "push --create"]),
        (("fetch", "nosuchremote"), {}, 4, ["no such remote: nosuchremote"]),
    ]
    for args, env, code, words in cases:
        res = world.cli.with_env(**env)(*args, cwd=site)
        line = one_line_error(res.stderr)
        assert res.returncode == code, (args, env, res.stderr)
        for w in words:
            assert w in line, (args, line)
        no_secret(world, res.stdout, res.stderr)
        assert wrong not in res.stderr
    # A clone that cannot connect leaves nothing behind.
    target = world.fresh("clone")
    res = world.cli.with_env(AWS_ENDPOINT_URL=closed)("clone", f"s3://{world.bucket}/x", target)
    assert res.returncode == 6 and "cannot reach" in one_line_error(res.stderr)
    assert not target.exists()
    assert sw.access_key not in (res.stdout + res.stderr)


# -- collaboration habits ---------------------------------------------------------------------------


def test_sites_and_coordinator_over_s3(world):
    url = f"s3://{world.bucket}/project-{uuid.uuid4().hex[:6]}"
    cli = world.cli

    # The coordinator starts the project.
    coord = world.fresh("coord")
    cli.ok("init", "--site", "coordinator", coord)
    cli.ok("commit", world.adapters["one"], "-m", "base adapter", cwd=coord)
    cli.ok("remote", "add", "hub", url, cwd=coord)
    first = cli.json("push", "hub", "--create", "--json", cwd=coord)
    assert set(first) >= {"objects", "bytes", "refs", "skipped", "seconds"}
    assert first["objects"] > 0 and first["bytes"] > 0
    assert first["refs"][0]["ref"] == "refs/heads/main" and first["refs"][0]["status"] == "new"
    assert cli.ok("remote", "-v", cwd=coord).stdout.splitlines() == [f"hub\t{url} (fetch)", f"hub\t{url} (push)"]

    # Site a clones, works, pushes its branch.
    a = world.fresh("a")
    cli.ok("clone", "-q", url, a)
    assert Repository.open(a).head_branch() == "main" and head(a) == head(coord)
    assert cli.ok("remote", cwd=a).stdout.split() == ["origin"]
    cli.ok("config", "user.site", "a", cwd=a)
    world.commit(a, "two", "site a round 1")
    sent = cli.json("push", "origin", "main:sites/a", "--json", cwd=a)
    assert sent["objects"] == 3 and sent["refs"][0]["ref"] == "refs/heads/sites/a"

    # Site b starts empty, pulls main (a fast-forward), works, pushes its branch.
    b = world.fresh("b")
    cli.ok("init", "--site", "b", b)
    cli.ok("remote", "add", "hub", url, cwd=b)
    pulled = cli.json("pull", "hub", "main", "--json", cwd=b)
    assert pulled["merge"] == "fast-forward" and pulled["head"] == head(coord)
    world.commit(b, "three", "site b round 1")
    world.push(b, "hub", "main:sites/b")

    # The coordinator fetches both and looks.
    fetched = cli.json("fetch", "hub", "--json", cwd=coord)
    assert {r["ref"] for r in fetched["refs"]} == {"refs/remotes/hub/sites/a", "refs/remotes/hub/sites/b"}
    assert fetched["objects"] == 3 + 10 and fetched["bytes"] > 0
    branches = cli.ok("branch", "-r", cwd=coord).stdout
    for name in ("hub/main", "hub/sites/a", "hub/sites/b"):
        assert name in branches
    log = cli.json("log", "hub/main..hub/sites/a", "--json", cwd=coord)["commits"]
    assert [c["message"] for c in log] == ["site a round 1"] and log[0]["site"] == "a"
    world.commit(coord, "three", "coordinator update")
    ahead = cli.json("log", "hub/main..main", "--json", cwd=coord)["commits"]
    assert [c["message"] for c in ahead] == ["coordinator update"]
    world.push(coord, "hub")
    assert cli.json("log", "hub/main..main", "--json", cwd=coord)["commits"] == []

    # Site a pulls the coordinator's main: a fast-forward of its main? No:
    # a committed on main, so it has diverged; pull says so and what to do.
    res = cli("pull", "origin", "main", cwd=a)
    assert res.returncode == 1
    line = one_line_error(res.stderr)
    assert "cannot fast-forward main to origin/main" in line and "mfgit merge origin/main" in line
    cli.ok("switch", "-c", "fresh", "origin/main~1", cwd=a)
    assert cli.json("pull", "origin", "main", "--json", cwd=a)["merge"] == "fast-forward"
    assert head(a) == head(coord)

    # remote remove drops the remote and its tracking branches.
    cli.ok("remote", "remove", "hub", cwd=coord)
    assert cli.ok("remote", "-v", cwd=coord).stdout == ""
    assert "hub/" not in cli.ok("branch", "-r", cwd=coord).stdout
    for s in (coord, a, b):
        fsck_ok(s)


def test_credentials_never_stored_and_endpoint_from_config(world):
    """No AWS_ENDPOINT_URL: the endpoint comes from `mfgit config
    remote.NAME.endpoint` (or `clone --endpoint`); the keys only from the
    environment, and they end up in no file of the repository or the remote."""
    sw = world.seaweed
    url = f"s3://{world.bucket}/creds-{uuid.uuid4().hex[:6]}"
    cli = world.cli.with_env(AWS_ENDPOINT_URL=None)
    a = world.site("a")
    world.commit(a, "one", "base")
    cli.ok("remote", "add", "hub", url, cwd=a)
    cli.ok("config", "remote.hub.endpoint", sw.endpoint_url, cwd=a)
    cli.ok("push", "-q", "--create", "hub", cwd=a)
    assert f"endpoint={sw.endpoint_url}" in cli.ok("remote", "-v", cwd=a).stdout

    b = world.fresh("b")
    cloned = cli.json("clone", "--endpoint", sw.endpoint_url, url, b, "--json")
    assert cloned["branch"] == "main" and head(b) == head(a)
    assert cli.ok("config", "remote.origin.endpoint", cwd=b).stdout.strip() == sw.endpoint_url
    cli.ok("fetch", "-q", "origin", cwd=b)

    secrets = [sw.secret_key.encode(), sw.access_key.encode()]
    for repo in (a, b):
        for path in repo.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not any(s in data for s in secrets), path
    remote = Remote("s3", url, s3=sw.s3_options())
    with remote.transport() as t:
        for key in t.list(""):
            data = t.get(key)
            assert not any(s in data for s in secrets), key


def test_clone_checks_out_the_remote_head_branch(world):
    hub = world.fresh("hub")
    world.cli.ok("init", "--bare", "-b", "trunk", hub)
    a = world.site("a")
    world.commit(a, "one", "base")
    Repository.open(a).remote_add("hub", str(hub))
    world.push(a, "hub", "main")
    Repository.open(a).switch("trunk", create=True)
    world.commit(a, "two", "trunk work")
    world.push(a, "hub", "trunk")

    b = world.fresh("b")
    out = world.cli.ok("clone", hub, b).stdout
    assert "Cloned into" in out
    repo = Repository.open(b)
    assert repo.head_branch() == "trunk" and head(b) == head(a, "trunk")
    assert tracking(b, "origin/main") == head(a, "main")
    assert world.cli.ok("remote", "-v", cwd=b).stdout.splitlines()[0] == f"origin\t{hub} (fetch)"
    # A relative path, and a file:// URL, work the same.
    world.cli.at(world.root).ok("clone", "-q", hub.name, "rel-clone")
    world.cli.at(world.root).ok("clone", "-q", f"file://{hub}", "url-clone")
    assert Repository.open(world.root / "rel-clone").head_branch() == "trunk"
    # Cloning into a non-empty directory is refused, and leaves it alone.
    res = world.cli("clone", hub, b)
    assert res.returncode == 4 and "exists and is not empty" in one_line_error(res.stderr)
    fsck_ok(b)


# -- repairing a damaged repository from a remote ------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "s3"])
def test_fsck_repair_from_replaces_damaged_and_missing_objects_with_verified_copies(world, kind):
    from mfgit.cli.errors import DAMAGED

    remote = world.new_remote(kind)
    a = world.site(f"repair-{kind}", remote)
    c1 = world.commit(a, "one", "base")
    c2 = world.commit(a, "two", "update")
    world.push(a, "hub", "main")
    repo = Repository.open(a)
    a1 = repo.read_adapter(repo.read_commit(c1).adapter)
    a2_id = repo.read_commit(c2).adapter
    a2 = repo.read_adapter(a2_id)
    original = world.fresh("original")
    repo.checkout(c2, to=original)

    # Damage: one flipped byte in a tensor of c2; another tensor of c2 gone;
    # c1's adapter gone together with one of its own tensors (which nothing
    # else names: it shows up as missing only once the adapter is back).
    flipped, lost = sorted(a2.tensor_ids())[:2]
    hidden = sorted(set(a1.tensor_ids()) - set(a2.tensor_ids()))[0]
    repo.store.corrupt(flipped, 200)
    for oid in (lost, repo.read_commit(c1).adapter, hidden):
        os.unlink(repo.store._path(oid))

    res = world.cli("checkout", c2, "--to", world.fresh("broken"), cwd=a)
    assert res.returncode == DAMAGED and "--repair-from REMOTE" in one_line_error(res.stderr)
    assert world.cli("fsck", cwd=a).returncode == DAMAGED

    res = world.cli("fsck", "--read-data", "--repair-from", "hub", "--json", cwd=a)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and report["read_data"]
    assert report["repair"] == {"remote": "hub", "unavailable": [],
                                "repaired": sorted([flipped, lost, repo.read_commit(c1).adapter, hidden])}

    # The repaired repository checks out the same bytes as before the damage.
    again = world.fresh("again")
    world.cli.ok("checkout", c2, "--to", again, cwd=a)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (again / name).read_bytes() == (original / name).read_bytes()
    # Nothing left to repair: a second run repairs nothing and says ok.
    text = world.cli.ok("fsck", "--repair-from", "hub", cwd=a).stdout
    assert "repaired" not in text and text.rstrip().endswith(": ok")


def test_fsck_repair_from_names_what_the_remote_cannot_supply(world):
    from mfgit.cli.errors import DAMAGED

    remote = world.new_remote("folder")
    a = world.site("repair-partial", remote)
    c1 = world.commit(a, "one", "base")
    world.push(a, "hub", "main")
    c2 = world.commit(a, "two", "not pushed yet")
    repo = Repository.open(a)
    t1 = set(repo.read_adapter(repo.read_commit(c1).adapter).tensor_ids())
    t2 = set(repo.read_adapter(repo.read_commit(c2).adapter).tensor_ids())
    pushed_tensor, local_only = sorted(t1 - t2)[0], sorted(t2 - t1)[0]
    repo.store.corrupt(pushed_tensor, 100)
    repo.store.corrupt(local_only, 100)

    res = world.cli("fsck", "--repair-from", "hub", cwd=a)
    assert res.returncode == DAMAGED
    assert f"repaired object {pushed_tensor} from hub" in res.stdout
    assert f"object {local_only} is not available intact on hub" in res.stdout
    assert f"corrupt object {local_only}" in res.stdout  # still reported, and still there: nothing was lost
    assert repo.store.has(local_only)


@pytest.mark.parametrize("kind", ["folder", "s3"])
def test_push_never_sends_a_damaged_local_object(world, kind):
    from mfgit.cli.errors import DAMAGED

    remote = world.new_remote(kind)
    a = world.site(f"damaged-push-{kind}", remote)
    c1 = world.commit(a, "one", "base")
    world.push(a, "hub", "main")
    c2 = world.commit(a, "two", "update")
    repo = Repository.open(a)
    new = set(repo.read_adapter(repo.read_commit(c2).adapter).tensor_ids())
    new -= set(repo.read_adapter(repo.read_commit(c1).adapter).tensor_ids())
    bad = sorted(new)[0]
    repo.store.corrupt(bad, 300)

    res = world.cli("push", "hub", "main", cwd=a)
    assert res.returncode == DAMAGED
    line = one_line_error(res.stderr)
    assert bad in line and "it was not sent" in line and "--repair-from" in line
    assert remote.ref() == c1  # the remote did not move
    assert bad not in remote.object_ids()  # and never got the damaged bytes
    world.assert_consistent(remote)


def test_fsck_repair_from_refuses_an_unknown_remote_even_when_nothing_is_damaged(world, site):
    res = world.cli("fsck", "--repair-from", "no-such-remote", cwd=site)
    assert res.returncode != 0
    assert "no-such-remote" in one_line_error(res.stderr)


def test_repair_reports_a_sound_local_object_as_not_repaired(world):
    from mfgit.remote.registry import open_remote
    from mfgit.remote.fetch import repair_objects

    remote = world.new_remote("folder")
    a = world.site("repair-sound", remote)
    c1 = world.commit(a, "one", "base")
    world.push(a, "hub", "main")
    repo = Repository.open(a)
    sound = repo.read_commit(c1).adapter
    _, transport = open_remote(repo, "hub")
    with transport:
        assert repair_objects(repo, transport, [sound]) == ([], [sound])  # the remote had nothing better
