"""The Transport contract, run against a folder and against a real S3 server
(SeaweedFS, started once per session by the `seaweed` fixture; no mocks)."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from mfgit.errors import (
    InvalidRemoteURL,
    LockHeld,
    PreconditionFailed,
    RemoteAuthError,
    RemoteError,
    RemoteUnreachable,
)
from mfgit.remote.local import LocalTransport
from mfgit.errors import InvalidKey, KeyNotFound
from mfgit.remote.registry import open_transport
from mfgit.remote.transport import Transport
from mfgit.remote.url import RemoteURL, parse_remote_url

try:  # the rootdir on sys.path (python -m pytest, or tests/ a package)
    from tests.seaweed import free_ports, seaweed  # noqa: F401
except ImportError:  # tests/ itself on sys.path (pytest's rootdir-less import)
    from seaweed import free_ports, seaweed  # noqa: F401

BUCKET = "mfgit-contract"


@pytest.fixture(scope="session")
def s3_bucket(seaweed):
    seaweed.make_bucket(BUCKET)
    return BUCKET


def _open_s3(seaweed, prefix: str | None = None, **overrides) -> Transport:
    prefix = prefix if prefix is not None else f"t-{uuid.uuid4().hex[:12]}"
    return open_transport(f"s3://{BUCKET}/{prefix}", seaweed.s3_options(**overrides))


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def transport(request, tmp_path):
    if request.param == "local":
        root = tmp_path / "remote"
        root.mkdir()
        t = open_transport(str(root))
        assert isinstance(t, LocalTransport)
    else:
        server = request.getfixturevalue("seaweed")
        request.getfixturevalue("s3_bucket")
        t = _open_s3(server)  # a fresh prefix per test: tests share the bucket
    try:
        yield t
    finally:
        t.close()


# -- basic operations ------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 11, 5 * 1024 * 1024], ids=["empty", "small", "5MB"])
def test_put_get_round_trip(transport, size):
    data = os.urandom(size)
    transport.put("objects/ab/cdef", data)
    assert transport.get("objects/ab/cdef") == data
    got = transport.get_versioned("objects/ab/cdef")
    assert got is not None and got[0] == data and isinstance(got[1], str) and got[1]


def test_get_missing_key(transport):
    with pytest.raises(KeyNotFound) as info:
        transport.get("refs/heads/nope")
    assert info.value.key == "refs/heads/nope"
    assert isinstance(info.value, RemoteError)
    assert transport.get_versioned("refs/heads/nope") is None


def test_exists(transport):
    assert not transport.exists("config")
    transport.put("config", b"[core]\n")
    assert transport.exists("config")
    assert not transport.exists("conf")
    transport.put("refs/heads/main", b"x")
    assert not transport.exists("refs/heads")  # a "folder" is not a key


def test_list_prefix_sorted_recursive(transport):
    keys = ["refs/heads/main", "refs/heads/sites/b", "refs/heads/sites/a", "refs/tags/v1",
            "objects/ab/cd", "objects/ff/00", "config", "HEAD"]
    for k in keys:
        transport.put(k, k.encode())
    assert transport.list("refs/") == ["refs/heads/main", "refs/heads/sites/a", "refs/heads/sites/b", "refs/tags/v1"]
    assert transport.list("refs/heads/sites/") == ["refs/heads/sites/a", "refs/heads/sites/b"]
    assert transport.list("refs/heads/s") == ["refs/heads/sites/a", "refs/heads/sites/b"]
    assert transport.list("objects/") == ["objects/ab/cd", "objects/ff/00"]
    assert transport.list("") == sorted(keys)
    assert transport.list("nothing/") == []
    assert transport.list("nothing/deeper/") == []


def test_delete(transport):
    transport.put("refs/heads/gone", b"1")
    transport.delete("refs/heads/gone")
    assert not transport.exists("refs/heads/gone")
    with pytest.raises(KeyNotFound):
        transport.get("refs/heads/gone")
    assert transport.list("refs/") == []
    transport.delete("refs/heads/gone")  # deleting an absent key is not an error


def test_is_empty_only_when_nothing_is_there(transport):
    assert transport.is_empty()
    transport.put("notes.txt", b"someone's file")
    assert not transport.is_empty()
    transport.delete("notes.txt")
    assert transport.is_empty()


def test_local_folder_with_only_foreign_entries_is_not_empty(tmp_path):
    """A folder whose entries are no keys (a hidden lock, a folder, a symlink) is still someone's: not empty."""
    for entry in ("sub", ".x.lock", "link"):
        root = tmp_path / entry / "remote"
        root.mkdir(parents=True)
        target = root / entry
        if entry == "sub":
            target.mkdir()
        elif entry == "link":
            target.symlink_to(tmp_path)
        else:
            target.write_text("held")
        t = open_transport(str(root))
        assert t.list("") == [] and not t.is_empty(), entry


def test_overwrite(transport):
    transport.put("HEAD", b"first, and longer than the second")
    transport.put("HEAD", b"second")
    assert transport.get("HEAD") == b"second"
    assert transport.list("") == ["HEAD"]


# -- compare-and-swap ------------------------------------------------------------------


def test_put_if_create_only(transport):
    v = transport.put_if("refs/heads/main", b"a" * 64, None)
    assert isinstance(v, str) and v
    with pytest.raises(PreconditionFailed) as info:
        transport.put_if("refs/heads/main", b"b" * 64, None)
    assert info.value.key == "refs/heads/main" and info.value.expected is None
    assert transport.get_versioned("refs/heads/main") == (b"a" * 64, v)


def test_put_if_with_version(transport):
    v0 = transport.put_if("refs/heads/main", b"one", None)
    data, v = transport.get_versioned("refs/heads/main")
    assert (data, v) == (b"one", v0)
    v1 = transport.put_if("refs/heads/main", b"two", v0)
    assert v1 != v0
    assert transport.get_versioned("refs/heads/main") == (b"two", v1)
    with pytest.raises(PreconditionFailed) as info:  # stale version
        transport.put_if("refs/heads/main", b"three", v0)
    assert info.value.expected == v0
    with pytest.raises(PreconditionFailed):  # a made-up version
        transport.put_if("refs/heads/main", b"three", '"0123456789abcdef0123456789abcdef"')
    assert transport.get("refs/heads/main") == b"two"
    with pytest.raises(PreconditionFailed):  # a version for a key that is absent
        transport.put_if("refs/heads/other", b"x", v1)
    assert not transport.exists("refs/heads/other")
    # a plain put changes the version too
    transport.put("refs/heads/main", b"four")
    with pytest.raises(PreconditionFailed):
        transport.put_if("refs/heads/main", b"five", v1)


def test_put_if_race_has_exactly_one_winner(transport):
    key = "refs/heads/contended"
    v0 = transport.put_if(key, b"base", None)
    n = 8
    barrier = threading.Barrier(n)
    results: dict[int, object] = {}

    def contender(i: int) -> None:
        barrier.wait()
        try:
            results[i] = transport.put_if(key, f"winner {i}".encode(), v0)
        except PreconditionFailed as exc:
            results[i] = exc
        except Exception as exc:  # anything else fails the test below
            results[i] = ("unexpected", exc)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == n
    winners = [i for i, r in results.items() if isinstance(r, str)]
    losers = [i for i, r in results.items() if isinstance(r, PreconditionFailed)]
    assert len(winners) == 1, results
    assert len(losers) == n - 1, results
    data, version = transport.get_versioned(key)
    assert data == f"winner {winners[0]}".encode()
    assert version == results[winners[0]]


# -- many at once ----------------------------------------------------------------------


def test_put_many_get_many(transport):
    items = {f"objects/{i:02x}/{uuid.uuid4().hex}": os.urandom(100 + 997 * i) for i in range(50)}
    put_done: list[tuple[str, int]] = []
    transport.put_many(iter(items.items()), on_done=lambda k, n: put_done.append((k, n)))
    assert sorted(put_done) == sorted((k, len(v)) for k, v in items.items())
    assert transport.list("objects/") == sorted(items)

    got_done: list[tuple[str, int]] = []
    got = dict(transport.get_many(list(items), on_done=lambda k, n: got_done.append((k, n))))
    assert got == items
    assert sorted(got_done) == sorted((k, len(v)) for k, v in items.items())


def test_get_many_missing_key_raises(transport):
    transport.put("objects/aa/1", b"1")
    with pytest.raises(KeyNotFound):
        dict(transport.get_many(["objects/aa/1", "objects/aa/missing"]))


# -- confinement -----------------------------------------------------------------------

BAD_KEYS = ["../escape", "refs/../../escape", "/etc/passwd", "refs\\heads\\x", "a\x00b", "a\nb", "",
            "refs//heads", "./config", "refs/.", "refs/heads/main.lock", ".tmp-123/x"]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_keys_are_confined(transport, key, tmp_path):
    with pytest.raises(InvalidKey):
        transport.put(key, b"x")
    with pytest.raises(InvalidKey):
        transport.get(key)
    with pytest.raises(InvalidKey):
        transport.exists(key)
    with pytest.raises(InvalidKey):
        transport.delete(key)
    with pytest.raises(InvalidKey):
        transport.put_if(key, b"x", None)
    with pytest.raises(InvalidKey):
        list(transport.get_many([key]))
    assert not (tmp_path / "escape").exists()
    assert transport.list("") == []


@pytest.mark.parametrize("prefix", ["../", "/abs", "a/../b", "a\\b"])
def test_list_prefix_is_confined(transport, prefix):
    with pytest.raises(InvalidKey):
        transport.list(prefix)


# -- local folder specifics ------------------------------------------------------------


def test_local_missing_root_says_how_to_create_it(tmp_path):
    with pytest.raises(RemoteUnreachable) as info:
        open_transport(str(tmp_path / "absent"))
    assert "does not exist" in str(info.value)
    assert "mfgit init --bare" in str(info.value)


def test_local_root_is_a_file(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(RemoteError):
        LocalTransport(str(tmp_path / "f"))


def test_local_writes_leave_no_temporary_or_lock_files(tmp_path):
    t = LocalTransport(str(tmp_path))
    t.put("objects/ab/cd", b"x")
    v = t.put_if("refs/heads/main", b"1", None)
    t.put_if("refs/heads/main", b"2", v)
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert found == ["objects/ab/cd", "refs/heads/main"]


def test_local_stale_lock_is_reported(tmp_path):
    t = LocalTransport(str(tmp_path), lock_timeout=0.2)
    t.put("refs/heads/main", b"1")
    (tmp_path / "refs/heads/main.lock").write_bytes(b"crashed writer\n")
    start = time.monotonic()
    with pytest.raises(LockHeld) as info:
        t.put_if("refs/heads/main", b"2", None)
    assert time.monotonic() - start < 5
    assert info.value.path.endswith("main.lock")
    assert t.get("refs/heads/main") == b"1"
    assert t.list("refs/") == ["refs/heads/main"]  # lock files are not keys


def test_local_symlink_out_of_root_is_refused(tmp_path):
    root = tmp_path / "remote"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not read")
    (root / "objects").symlink_to(outside, target_is_directory=True)
    (root / "HEAD").symlink_to(outside / "secret")
    t = LocalTransport(str(root))
    with pytest.raises(InvalidKey):
        t.get("objects/secret")
    with pytest.raises(InvalidKey):
        t.put("objects/new", b"x")
    assert not (outside / "new").exists()
    with pytest.raises((InvalidKey, KeyNotFound)):
        t.get("HEAD")
    assert t.list("") == []


def test_local_transport_url_and_relative_path(tmp_path, monkeypatch):
    (tmp_path / "r").mkdir()
    monkeypatch.chdir(tmp_path)
    t = open_transport("r")
    assert t.url == str(tmp_path / "r")
    t2 = open_transport(f"file://{tmp_path}/r")
    t2.put("config", b"c")
    assert t.get("config") == b"c"


# -- S3 specifics ----------------------------------------------------------------------


@pytest.mark.s3
def test_s3_objects_live_under_the_prefix(seaweed, s3_bucket):
    prefix = f"team/{uuid.uuid4().hex[:8]}"
    t = _open_s3(seaweed, prefix)
    other = _open_s3(seaweed, prefix + "-other")
    t.put("refs/heads/main", b"1")
    assert t.url == f"s3://{BUCKET}/{prefix}"
    keys = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")["Contents"]]
    assert keys == [f"{prefix}/refs/heads/main"]
    assert other.list("") == []
    assert not other.exists("refs/heads/main")


@pytest.mark.s3
def test_s3_wrong_secret_is_an_auth_error_without_the_secret(seaweed, s3_bucket):
    good = _open_s3(seaweed)
    good.put("config", b"c")
    secret = "wrong-" + seaweed.secret_key[::-1]
    bad = open_transport(good.url, seaweed.s3_options(secret_access_key=secret))
    for op in (lambda: bad.get("config"), lambda: bad.put("x", b"1"), lambda: bad.list(""),
               lambda: bad.exists("config"), lambda: bad.put_if("y", b"1", None)):
        with pytest.raises(RemoteAuthError) as info:
            op()
        msg = str(info.value)
        assert "\n" not in msg
        assert secret not in msg and seaweed.secret_key not in msg
        assert secret not in repr(bad) and secret not in bad.url
    bad_key = open_transport(good.url, seaweed.s3_options(access_key_id="AKNOTAKNOWNKEY000000"))
    with pytest.raises(RemoteAuthError):
        bad_key.get("config")


@pytest.mark.s3
def test_s3_missing_bucket_is_named(seaweed, s3_bucket):
    t = open_transport("s3://mfgit-no-such-bucket/x", seaweed.s3_options())
    for op in (lambda: t.get("config"), lambda: t.put("config", b"c"), lambda: t.list(""),
               lambda: t.exists("config"), lambda: t.get_versioned("config"),
               lambda: t.put_if("config", b"c", None)):
        with pytest.raises(RemoteError) as info:
            op()
        assert not isinstance(info.value, (RemoteAuthError, RemoteUnreachable, KeyNotFound))
        assert "bucket mfgit-no-such-bucket does not exist" in str(info.value)


@pytest.mark.s3
def test_s3_closed_port_is_unreachable_quickly(seaweed):
    (port,) = free_ports(1)
    t = open_transport(f"s3://{BUCKET}/x", seaweed.s3_options(endpoint_url=f"http://127.0.0.1:{port}"))
    start = time.monotonic()
    with pytest.raises(RemoteUnreachable) as info:
        t.get("config")
    assert time.monotonic() - start < 15
    msg = str(info.value)
    assert f"cannot reach http://127.0.0.1:{port}: connection refused" in msg
    assert seaweed.secret_key not in msg


# -- URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize("url, expected", [
    ("/srv/remotes/adapters", RemoteURL("file", "/srv/remotes/adapters", None, "")),
    ("/srv/remotes/adapters/", RemoteURL("file", "/srv/remotes/adapters", None, "")),
    ("file:///srv/remotes/adapters", RemoteURL("file", "/srv/remotes/adapters", None, "")),
    ("file://localhost/srv/a%20b", RemoteURL("file", "/srv/a b", None, "")),
    ("s3://my-bucket", RemoteURL("s3", None, "my-bucket", "")),
    ("s3://my-bucket/", RemoteURL("s3", None, "my-bucket", "")),
    ("s3://my.bucket.2/team/adapters", RemoteURL("s3", None, "my.bucket.2", "team/adapters")),
    ("s3://my-bucket/team/adapters/", RemoteURL("s3", None, "my-bucket", "team/adapters")),
    ("S3://abc/p", RemoteURL("s3", None, "abc", "p")),
])
def test_parse_remote_url_accepts(url, expected):
    assert parse_remote_url(url) == expected


def test_parse_remote_url_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_remote_url("remote").path == str(tmp_path / "remote")
    assert parse_remote_url("./a/../remote").path == str(tmp_path / "remote")
    assert parse_remote_url("remote", base="/srv").path == "/srv/remote"
    assert parse_remote_url("dir:with:colons").path == str(tmp_path / "dir:with:colons")
    assert parse_remote_url("~/x").path == str(tmp_path / "~" / "x")  # no expansion of any kind
    assert parse_remote_url("$HOME/x").path == str(tmp_path / "$HOME" / "x")


@pytest.mark.parametrize("url, reason", [
    ("", "empty"),
    ("   ", "empty"),
    ("http://example.com/remote", "not supported"),
    ("https://example.com/remote", "not supported"),
    ("ssh://host/srv/remote", "not supported"),
    ("git://host/remote", "not supported"),
    ("gs://bucket/x", "not supported"),
    ("user@host:srv/remote", "ssh"),
    ("s3:bucket/x", "s3://"),
    ("/srv/re\x00mote", "control"),
    ("/srv/re\nmote", "control"),
    ("s3://bucket/a\tb", "control"),
    ("s3://", "no bucket"),
    ("s3:///prefix", "no bucket"),
    ("s3://ab/x", "3 to 63"),
    ("s3://" + "a" * 64, "3 to 63"),
    ("s3://My-Bucket/x", "lowercase"),
    ("s3://my_bucket/x", "lowercase"),
    ("s3://-bucket/x", "begin and end"),
    ("s3://bucket-/x", "begin and end"),
    ("s3://my..bucket/x", "adjacent"),
    ("s3://192.168.1.10/x", "IP"),
    ("s3://xn--bucket/x", "xn--"),
    ("s3://bucket:9000/x", "lowercase"),
    ("s3://bucket/team/../other", "'..'"),
    ("s3://bucket/../x", "'..'"),
    ("s3://bucket/a//b", "empty segment"),
    ("s3://bucket/a\\b", "backslash"),
    ("s3://bucket/x?versionId=1", "query"),
    ("s3://AKIAXXXX:topsecret@bucket/x", "credentials"),
    ("s3://user@bucket/x", "credentials"),
    ("http://user:topsecret@example.com/r", "credentials"),
    ("file://otherhost/srv/r", "host"),
    ("file://user:topsecret@localhost/srv", "credentials"),
])
def test_parse_remote_url_rejects(url, reason):
    with pytest.raises(InvalidRemoteURL) as info:
        parse_remote_url(url)
    assert reason.lower() in info.value.reason.lower(), info.value.reason
    assert "topsecret" not in str(info.value)


def test_open_transport_chooses_by_scheme(tmp_path):
    from mfgit.remote.s3 import S3Transport

    assert isinstance(open_transport(str(tmp_path)), LocalTransport)
    t = open_transport("s3://some-bucket/pre/fix", {"endpoint_url": "http://127.0.0.1:1", "region": "us-east-1",
                                                    "access_key_id": "AKX", "secret_access_key": "s3cr3t-value"})
    assert isinstance(t, S3Transport)
    assert t.url == "s3://some-bucket/pre/fix"
    assert "s3cr3t-value" not in repr(t) and "s3cr3t-value" not in str(vars(t))
    t.close()
