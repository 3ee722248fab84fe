"""Remotes that misbehave or are misnamed, through the real `mfgit` command.

- credentials in an endpoint or URL are refused, never stored, never shown;
  an S3 query string (a presigned URL's signature) is not echoed either;
- push never makes a remote of a folder or S3 prefix that is not one:
  only `init --bare`, or `push --create` into an empty place;
- a server that trickles its answer or a port that never answers makes
  push and fetch fail within the configured limit, with one line that says
  how long it took and what the limit was (real sockets on 127.0.0.1,
  started and stopped by the test).
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from mfgit.api.repository import Repository
from tests.conftest import one_line_error
from tests.test_remote_cli import site, world  # noqa: F401  (module fixtures: a world with S3, a site with a commit)
from tests.test_remote_sync import Remote, fsck_ok, head

try:
    from tests.seaweed import seaweed  # noqa: F401  (session fixture)
except ImportError:  # pragma: no cover
    from seaweed import seaweed  # noqa: F401

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYSECRETKEY"
SLACK = 10.0  # seconds for the process to start and stop on a loaded machine


def no_secret(world, *texts: str) -> None:
    for text in texts:
        for s in (SECRET, "AKIASECRETID", world.seaweed.secret_key, "SIGSECRET"):
            assert s not in text, text


def files_contain(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


# -- credentials ---------------------------------------------------------------------------------


ENDPOINTS_WITH_CREDENTIALS = [
    f"http://AKIASECRETID:{SECRET}@127.0.0.1:9000",
    f"https://AKIASECRETID:{SECRET}@minio.example.org",
    "http://user@127.0.0.1:9000/?X-Amz-Signature=SIGSECRET",
    "http://127.0.0.1:9000/?X-Amz-Credential=AKIASECRETID&X-Amz-Signature=SIGSECRET",
]


@pytest.mark.parametrize("endpoint", ENDPOINTS_WITH_CREDENTIALS, ids=range(len(ENDPOINTS_WITH_CREDENTIALS)))
def test_endpoint_with_credentials_is_refused_and_never_stored(world, site, endpoint):
    res = world.cli("remote", "add", "leaky", f"s3://{world.bucket}/x", "--endpoint", endpoint, cwd=site)
    assert res.returncode == 4, res.stderr
    line = one_line_error(res.stderr)
    assert "invalid S3 endpoint" in line, line
    no_secret(world, res.stdout, res.stderr)
    assert Repository.open(site).config.get("remote.leaky.url") is None  # nothing half-added
    res = world.cli("config", "remote.plain.endpoint", endpoint, cwd=site)
    assert res.returncode == 4 and "invalid S3 endpoint" in one_line_error(res.stderr)
    no_secret(world, res.stdout, res.stderr)
    target = world.fresh("clone")
    res = world.cli("clone", "--endpoint", endpoint, f"s3://{world.bucket}/x", target)
    assert res.returncode == 4 and "invalid S3 endpoint" in one_line_error(res.stderr)
    no_secret(world, res.stdout, res.stderr)
    assert not target.exists()
    assert not files_contain(site, "SECRET")


def test_endpoint_with_credentials_in_config_or_environment_is_not_used_or_shown(world, site):
    """A config edited by hand, or AWS_ENDPOINT_URL, holding credentials: refused, redacted in every output."""
    leaky = ENDPOINTS_WITH_CREDENTIALS[0]
    repo = Repository.open(site)
    repo.remote_add("handmade", f"s3://{world.bucket}/handmade")
    repo.config.set("remote.handmade.endpoint", leaky)  # as an edit by hand would: no check on this path
    assert repo.config.get("remote.handmade.endpoint") == leaky
    for args in (("fetch", "handmade"), ("push", "handmade", "main")):
        res = world.cli(*args, cwd=site)
        assert res.returncode == 4 and "invalid S3 endpoint 'http://***@127.0.0.1:9000'" in one_line_error(res.stderr)
        no_secret(world, res.stdout, res.stderr)
    for args in (("remote", "-v"), ("remote", "--json")):
        out = world.cli.ok(*args, cwd=site).stdout
        assert "handmade" in out and "***" in out
        no_secret(world, out)
    repo.config.set("remote.handmade.endpoint", None)
    res = world.cli.with_env(AWS_ENDPOINT_URL=leaky)("fetch", "handmade", cwd=site)
    assert res.returncode == 4 and "invalid S3 endpoint" in one_line_error(res.stderr)
    no_secret(world, res.stdout, res.stderr)


URLS_WITH_SECRETS = [
    f"s3://{'bucket-x'}/p?X-Amz-Credential=AKIASECRETID&X-Amz-Signature=SIGSECRET",
    "s3://bucket-x/p#X-Amz-Signature=SIGSECRET",
    f"s3://AKIASECRETID:{SECRET}@bucket-x/p",  # the secret holds a "/"
    f"AKIASECRETID:{SECRET}@bucket-x/p",
]


@pytest.mark.parametrize("url", URLS_WITH_SECRETS, ids=range(len(URLS_WITH_SECRETS)))
def test_credentials_in_a_remote_url_are_refused_and_not_echoed(world, site, url):
    for args in (("remote", "add", "bad", url), ("push", url, "main"), ("fetch", url)):
        res = world.cli(*args, cwd=site)
        assert res.returncode == 4, (args, res.stderr)
        assert "invalid remote URL" in one_line_error(res.stderr)
        no_secret(world, res.stdout, res.stderr)
    target = world.fresh("clone")
    res = world.cli("clone", url, target)
    assert res.returncode == 4 and not target.exists()
    no_secret(world, res.stdout, res.stderr)
    assert Repository.open(site).config.get("remote.bad.url") is None


# -- push never makes a remote of what is not one ----------------------------------------------------


def test_push_to_a_folder_that_is_not_a_remote_is_refused(world, site):
    home = world.fresh("home-dir")
    (home / "Documents").mkdir(parents=True)
    (home / ".bashrc").write_text("export PATH\n")
    (home / "notes.txt").write_text("mine\n")
    before = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    for args in (("push", home, "main"), ("push", "--create", home, "main"), ("push", "--notes", home),
                 ("push", "--create", "--notes", home)):
        res = world.cli(*args, cwd=site)
        assert res.returncode == 6, (args, res.stderr)
        line = one_line_error(res.stderr)
        assert f"remote {home}: is not an mfgit remote (the folder has no mfgit config but is not empty)" in line
        assert "mfgit init --bare PATH" in line
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == before  # not one file written


def test_push_to_an_empty_folder_needs_init_bare_or_create(world, site):
    typo = world.fresh("empty-hub")
    typo.mkdir()
    res = world.cli("push", typo, "main", cwd=site)
    assert res.returncode == 6
    line = one_line_error(res.stderr)
    assert "is not an mfgit remote (the folder is empty)" in line
    assert f"mfgit init --bare {typo}" in line and "push --create" in line
    assert list(typo.iterdir()) == []
    # A folder that does not exist at all (a typo) is not created either.
    res = world.cli("push", str(typo) + "-typo", "main", cwd=site)
    assert res.returncode == 6 and "the folder does not exist" in one_line_error(res.stderr)
    assert not Path(str(typo) + "-typo").exists()

    pushed = world.cli.json("push", "--create", typo, "main", "--json", cwd=site)
    assert pushed["refs"][0]["status"] == "new"
    fsck_ok(typo)
    assert Repository.open(typo).resolve("main") == head(site)

    made = world.fresh("made-by-init")
    made.mkdir()
    world.cli.ok("init", "--bare", made)
    world.cli.ok("push", "-q", made, "main", cwd=site)
    assert Repository.open(made).resolve("main") == head(site)


def test_push_to_an_s3_prefix_that_is_not_a_remote_is_refused(world, site):
    sw = world.seaweed
    empty = f"s3://{world.bucket}/new-{uuid.uuid4().hex[:8]}"
    res = world.cli("push", empty, "main", cwd=site)
    assert res.returncode == 6
    line = one_line_error(res.stderr)
    assert "is not an mfgit remote (the S3 prefix is empty)" in line and "push --create" in line
    assert Remote("s3", empty, s3=sw.s3_options()).transport().list("") == []

    taken = f"new-{uuid.uuid4().hex[:8]}"
    sw.client().put_object(Bucket=world.bucket, Key=f"{taken}/somebody-elses.csv", Body=b"a,b\n")
    res = world.cli("push", "--create", f"s3://{world.bucket}/{taken}", "main", cwd=site)
    assert res.returncode == 6
    assert "the S3 prefix has no mfgit config but is not empty" in one_line_error(res.stderr)
    with Remote("s3", f"s3://{world.bucket}/{taken}", s3=sw.s3_options()).transport() as t:
        assert t.list("") == ["somebody-elses.csv"]

    world.cli.ok("push", "-q", "--create", empty, "main", cwd=site)
    again = world.cli.json("push", empty, "main", "--json", cwd=site)  # a remote now: no flag needed
    assert again["refs"][0]["status"] == "up to date"


# -- time limits against misbehaving servers -----------------------------------------------------------


class TricklingServer:
    """Accepts every connection, reads the request, then sends an HTTP answer one header line per `pace` s, for ever."""

    def __init__(self, pace: float = 0.5):
        self.pace = pace
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.connections: list[socket.socket] = []
        self.lines_sent = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections.append(conn)
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        data = b""
        try:
            while b"\r\n\r\n" not in data and not self.stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    return
                data += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            n = 0
            while not self.stop.wait(self.pace):
                conn.sendall(f"X-Slow-{n}: still coming\r\n".encode())
                self.lines_sent += 1
                n += 1
        except OSError:
            return  # the client gave up: what the test wants

    def __enter__(self) -> "TricklingServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)
        for c in self.connections:
            c.close()
        self.sock.close()


class BlackHole:
    """A port that listens and never accepts: connections queue in the kernel and nothing ever answers."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "BlackHole":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()


def _fake_credentials(world):
    return world.cli.with_env(AWS_ENDPOINT_URL=None, AWS_ACCESS_KEY_ID="AKIDEXAMPLE",
                              AWS_SECRET_ACCESS_KEY="not-a-real-secret-but-long-enough")


def _timed(cli, *args, cwd):
    t0 = time.monotonic()
    res = cli(*args, cwd=cwd, timeout=120)
    return res, time.monotonic() - t0


def _stated_seconds(line: str) -> float:
    """The elapsed time the message claims ("gave up after 3.0 s", "3 attempt(s) in 3.0 s")."""
    m = re.search(r"(?:after|in) (\d+(?:\.\d+)?) s", line)
    assert m, line
    return float(m.group(1))


def _check_truthful(line: str, elapsed: float, limit: float) -> None:
    stated = _stated_seconds(line)
    assert f"{limit:g} s" in line, line
    assert stated <= limit + 1.0, line  # the operation itself stayed within its limit
    assert stated <= elapsed and elapsed - stated < SLACK, (line, elapsed)  # and the message says how long it took


def test_trickling_server_fails_push_and_fetch_within_the_limit(world, site):
    cli = _fake_credentials(world)
    with TricklingServer(pace=0.5) as server:
        repo = Repository.open(site)
        repo.remote_add("slow", f"s3://{world.bucket}/slow", endpoint=server.endpoint)
        cli.ok("config", "remote.slow.timeout", "3", cwd=site)
        res, elapsed = _timed(cli, "push", "slow", "main", cwd=site)
        assert res.returncode == 6, res.stderr
        line = one_line_error(res.stderr)
        assert "did not complete" in line and "within the limit of 3 s" in line, line
        assert elapsed < 3 + SLACK, elapsed
        _check_truthful(line, elapsed, 3)
        assert server.lines_sent >= 2  # it was trickling, not silent

        res, elapsed = _timed(cli, "fetch", "slow", "--timeout", "2", cwd=site)  # the flag wins over config
        assert res.returncode == 6
        line = one_line_error(res.stderr)
        assert "within the limit of 2 s" in line, line
        assert elapsed < 2 + SLACK, elapsed
        _check_truthful(line, elapsed, 2)

        target = world.fresh("slow-clone")
        res, elapsed = _timed(cli, "clone", "--endpoint", server.endpoint, "--timeout", "2",
                              f"s3://{world.bucket}/slow", target, cwd=world.root)
        assert res.returncode == 6 and "within the limit of 2 s" in one_line_error(res.stderr)
        assert elapsed < 2 + SLACK and not target.exists()


def test_black_holed_port_fails_within_the_limit_and_says_so(world, site):
    cli = _fake_credentials(world)
    with BlackHole() as hole:
        Repository.open(site).remote_add("hole", f"s3://{world.bucket}/hole", endpoint=hole.endpoint)
        cli.ok("config", "remote.hole.timeout", "4", cwd=site)
        cli.ok("config", "remote.hole.connectTimeout", "1", cwd=site)
        for args in (("push", "hole", "main"), ("fetch", "hole")):
            res, elapsed = _timed(cli, *args, cwd=site)
            assert res.returncode == 6, res.stderr
            line = one_line_error(res.stderr)
            assert elapsed < 4 + SLACK, (args, elapsed, line)
            assert "within 60 s" not in line
            assert ("within the limit of 4 s" in line) or ("connection timed out" in line), line
            if "within the limit" in line:
                _check_truthful(line, elapsed, 4)
            else:
                assert _stated_seconds(line) <= elapsed


def test_time_limits_bound_the_transport_operation_in_process(world):
    """The bound is on each transport operation (retries included), whatever the server sends."""
    from mfgit.errors import RemoteUnreachable
    from mfgit.remote.registry import open_transport

    with TricklingServer(pace=0.3) as server:
        opts = {"endpoint_url": server.endpoint, "access_key_id": "AKIDEXAMPLE",
                "secret_access_key": "not-a-real-secret", "timeout": 1.5, "connect_timeout": 1}
        with open_transport(f"s3://{world.bucket}/x", opts) as t:
            for op in (lambda: t.get("config"), lambda: t.put("objects/ab/cd", b"x" * 1000), lambda: t.list("refs/")):
                t0 = time.monotonic()
                with pytest.raises(RemoteUnreachable) as info:
                    op()
                took = time.monotonic() - t0
                assert took < 1.5 + 1.0, took
                assert "within the limit of 1.5 s" in str(info.value)
            assert threading.active_count() < 50  # no thread left behind per operation


def test_time_limit_settings_are_checked(world, site):
    for value in ("abc", "0", "-1", "inf", "nan"):
        res = world.cli("config", "--", "remote.plain.timeout", value, cwd=site)
        assert res.returncode == 4 and "not a number of seconds above 0" in one_line_error(res.stderr)
    res = world.cli("push", "plain", "--timeout", "0", cwd=site)
    assert res.returncode == 2  # click refuses it as usage
    # A sensible limit does not get in the way of a real S3 server.
    url = f"s3://{world.bucket}/limits-{uuid.uuid4().hex[:6]}"
    Repository.open(site).remote_add("limits", url, timeout="30", connectTimeout="2")
    assert "timeout=30" in world.cli.ok("remote", "-v", cwd=site).stdout
    world.cli.ok("push", "-q", "--create", "--timeout", "20", "limits", "main", cwd=site)
    fresh = world.fresh("limits-clone")
    world.cli.ok("clone", "-q", "--timeout", "20", url, fresh)
    assert head(fresh) == head(site)
