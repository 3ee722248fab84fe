"""A wall-clock limit on each operation of the S3 transport, retries and slow servers included.

botocore's ``read_timeout`` bounds each socket read, not a request: a server
that sends one header byte a second never trips it, and a push would hang for
ever. Retries multiply every limit too. So each transport operation (a GET,
a PUT, one page of a listing) runs under a `Deadline`:

* before each attempt botocore makes (its ``before-send`` event), the attempt
  is counted, its read timeout is cut to the time left, and an attempt is
  refused once no time is left (`DeadlineExceeded`, which botocore does not
  retry);
* each connection an operation uses (`DeadlineHTTPConnection`, installed as
  the connection class of the client's pools) takes the time left as its
  connect timeout and is registered with the operation;
* one watchdog thread shuts down the sockets of every operation whose time
  is up, so a read blocked on a trickling server returns at once.

An operation thus ends within its limit (plus the watchdog's tick), and the
error can say how long it took and how many attempts it made.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
)

TICK = 0.2  # seconds between two shutdowns of an expired operation's sockets


class DeadlineExceeded(Exception):
    """An attempt was about to start with no time left (not a botocore error: it is not retried)."""


class Deadline:
    """One operation's limit: when it started, when it must end, the attempts made, the connections used."""

    def __init__(self, limit: float, end: float | None = None):
        self.start = time.monotonic()
        self.limit = limit
        self.end = self.start + limit if end is None else end
        self.attempts = 0
        self.expired = False
        self.connections: list[Any] = []

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class _Watchdog:
    """The one thread that enforces every armed deadline of the process."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: set[Deadline] = set()
        self._thread: threading.Thread | None = None

    def arm(self, d: Deadline) -> None:
        with self._cond:
            self._armed.add(d)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mfgit-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()

    def disarm(self, d: Deadline) -> None:
        with self._cond:
            self._armed.discard(d)
            d.connections.clear()

    def attach(self, d: Deadline, conn: Any) -> None:
        with self._cond:
            if not any(c is conn for c in d.connections):
                d.connections.append(conn)
            expired = d.expired
        if expired:
            _shut(conn)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    due = [d for d in self._armed if d.end <= now]
                    if due:
                        break
                    later = [d.end - now for d in self._armed]
                    self._cond.wait(min(later) if later else None)
                for d in due:
                    d.expired = True
                victims = [c for d in due for c in d.connections]
            for conn in victims:
                _shut(conn)
            # An expired operation stays armed until it ends: keep shutting
            # down what it (re)connects, once a tick.
            with self._cond:
                self._cond.wait(TICK)


def _shut(conn: Any) -> None:
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


_watchdog = _Watchdog()
_local = threading.local()


def current() -> Deadline | None:
    """The deadline of the operation running in this thread, if any."""
    return getattr(_local, "deadline", None)


@contextmanager
def deadline(limit: float) -> Iterator[Deadline]:
    """Run the enclosed operation under a limit of `limit` seconds (never beyond an enclosing one)."""
    outer = current()
    d = Deadline(limit, end=None if outer is None else min(outer.end, time.monotonic() + limit))
    _local.deadline = d
    _watchdog.arm(d)
    try:
        yield d
    finally:
        _watchdog.disarm(d)
        _local.deadline = outer


def before_attempt(request: Any, read_timeout: float, **_: Any) -> None:
    """botocore ``before-send`` handler: count the attempt, cut its read timeout, refuse it when time is up."""
    d = current()
    if d is None:
        return None
    left = d.remaining()
    if left <= 0 or d.expired:
        raise DeadlineExceeded()
    d.attempts += 1
    context = getattr(request, "context", None)
    if isinstance(context, dict):
        context["read_timeout"] = max(0.001, min(read_timeout, left))
    return None  # botocore sends the request itself


class _DeadlineConnection:
    """Mixin: take the time left as connect timeout, and register with the operation's deadline."""

    def _register(self) -> None:
        d = current()
        if d is not None:
            _watchdog.attach(d, self)

    def connect(self) -> None:
        d = current()
        if d is not None:
            left = max(0.001, d.remaining())
            mine = self.timeout  # type: ignore[attr-defined]
            self.timeout = min(mine, left) if isinstance(mine, (int, float)) else left
            self._register()
        super().connect()  # type: ignore[misc]

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self._register()
        return super().request(*args, **kwargs)  # type: ignore[misc]


class DeadlineHTTPConnection(_DeadlineConnection, AWSHTTPConnection):
    pass


class DeadlineHTTPSConnection(_DeadlineConnection, AWSHTTPSConnection):
    pass


class DeadlineHTTPConnectionPool(AWSHTTPConnectionPool):
    ConnectionCls = DeadlineHTTPConnection


class DeadlineHTTPSConnectionPool(AWSHTTPSConnectionPool):
    ConnectionCls = DeadlineHTTPSConnection


def install(client: Any, read_timeout: float) -> None:
    """Put a botocore client's requests under the deadlines of `deadline()`.

    botocore has no public hook for the connection class, so the pool
    classes of the client's HTTP session are replaced, in the one dict its
    pool managers (proxied ones too) read them from, before any connection
    is made."""
    pools = client._endpoint.http_session._pool_classes_by_scheme
    pools["http"] = DeadlineHTTPConnectionPool
    pools["https"] = DeadlineHTTPSConnectionPool
    client.meta.events.register("before-send.s3", lambda request, **kw: before_attempt(request, read_timeout))
