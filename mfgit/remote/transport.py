"""The one small interface to a remote's bytes, and remote URL parsing.

A remote is a flat key → bytes store. Keys are relative, ``/``-separated
paths (``config``, ``refs/heads/main``, ``objects/ab/cdef…``). Two
implementations: a folder (`mfgit.remote.local.LocalTransport`, also for a
shared network folder) and S3-compatible object storage
(`mfgit.remote.s3.S3Transport`).

Contract (tests/test_transport_contract.py runs it against both):

* ``get`` raises `KeyNotFound` for an absent key.
* ``put`` is atomic for readers: they see the old object or the whole new
  one, never a part.
* ``list(prefix)`` returns every key that starts with ``prefix`` (a string
  prefix, recursive), sorted.
* ``delete`` of an absent key is not an error.
* ``get_versioned`` / ``put_if`` are compare-and-swap: a version token is
  the ETag on S3 and the SHA-256 of the content on a folder. ``put_if(key,
  data, None)`` succeeds only if the key is absent; ``put_if(key, data, v)``
  only if the key is at version ``v``. The loser gets `PreconditionFailed`.
  (Content tokens mean a folder cannot tell A→B→A from A; for refs, whose
  value is the content, that is the same answer.)
* ``put_many`` / ``get_many`` run concurrently; ``on_done(key, nbytes)`` is
  called in the caller's thread after each key completes. ``get_many``
  yields ``(key, data)`` in completion order, not in the order given.

Keys are confined: `check_key` refuses absolute keys, ``..`` / ``.`` or
empty segments, backslashes, NUL and control characters, and names mfgit
uses for its own bookkeeping on a folder (a last segment ending in
``.lock``, a segment starting with ``.tmp-``). Those names are refused on
both transports, so the set of valid keys is the same everywhere.

Nothing in a URL or in a remote's content is ever executed or handed to a
shell; credentials never appear in a URL, in `Transport.url` or in an error.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import unquote

from mfgit.errors import InvalidRemoteURL, PreconditionFailed, RemoteError

__all__ = [
    "Transport",
    "KeyNotFound",
    "InvalidKey",
    "PreconditionFailed",
    "RemoteURL",
    "check_key",
    "check_prefix",
    "parse_remote_url",
    "open_transport",
]

OnDone = Callable[[str, int], None]


class KeyNotFound(RemoteError):
    """`Transport.get` of a key the remote does not have.

    A `RemoteError` (an mfgit error): code that expects the key may be absent
    catches it; where it escapes, the CLI reports it as a remote error."""

    def __init__(self, key: str, remote: str = ""):
        super().__init__(remote, f"{key} does not exist")
        if not remote:
            self.message = f"{key} does not exist on the remote"
            self.args = (self.message,)
        self.key = key


class InvalidKey(RemoteError):
    """A key that would leave the remote's root or is otherwise not allowed.

    Keys can come from a remote's content (ref names in a listing), so this
    is an mfgit error, not a programming error."""

    def __init__(self, key: str, reason: str, remote: str = ""):
        super().__init__(remote, f"refusing key {key!r}: {reason}")
        if not remote:
            self.message = f"refusing remote key {key!r}: {reason}"
            self.args = (self.message,)
        self.key = key


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_key(key: str, remote: str = "") -> str:
    """Return `key` if it is a valid, confined key; raise `InvalidKey` if not."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(str(key), "empty key", remote)
    if _CONTROL.search(key):
        raise InvalidKey(key, "contains NUL or a control character", remote)
    if "\\" in key:
        raise InvalidKey(key, "contains a backslash", remote)
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        raise InvalidKey(key, "is absolute", remote)
    parts = key.split("/")
    for part in parts:
        if part == "":
            raise InvalidKey(key, "has an empty path segment", remote)
        if part in (".", ".."):
            raise InvalidKey(key, f"has a {part!r} segment", remote)
        if part.startswith(".tmp-"):
            raise InvalidKey(key, "a segment starts with '.tmp-' (reserved for temporary files)", remote)
    if parts[-1].endswith(".lock"):
        raise InvalidKey(key, "ends with '.lock' (reserved for lock files)", remote)
    return key


def check_prefix(prefix: str, remote: str = "") -> str:
    """A listing prefix: '' or a key prefix (may end with '/', may end mid-name)."""
    if prefix == "":
        return prefix
    if not isinstance(prefix, str):
        raise InvalidKey(str(prefix), "prefix is not a string", remote)
    if _CONTROL.search(prefix):
        raise InvalidKey(prefix, "contains NUL or a control character", remote)
    if "\\" in prefix:
        raise InvalidKey(prefix, "contains a backslash", remote)
    if prefix.startswith("/") or re.match(r"^[A-Za-z]:", prefix):
        raise InvalidKey(prefix, "is absolute", remote)
    parts = prefix.split("/")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "" and not last:
            raise InvalidKey(prefix, "has an empty path segment", remote)
        if part in (".", "..") and not last:
            raise InvalidKey(prefix, f"has a {part!r} segment", remote)
        if last and part == "..":
            raise InvalidKey(prefix, "has a '..' segment", remote)
    return prefix


def is_valid_key(key: str) -> bool:
    try:
        check_key(key)
    except InvalidKey:
        return False
    return True


# -- the interface -----------------------------------------------------------------------


class Transport(ABC):
    """Bytes under keys on a remote. See the module docstring for the contract."""

    url: str  # display form; never contains credentials
    max_workers: int = 8  # concurrency of put_many / get_many

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes, str] | None: ...

    @abstractmethod
    def put_if(self, key: str, data: bytes, expected: str | None) -> str: ...

    def put_many(self, items: Iterable[tuple[str, bytes]], on_done: OnDone | None = None) -> None:
        """Upload concurrently. The first failure is raised after the uploads
        already running finish; nothing further is started."""

        def one(item: tuple[str, bytes]) -> tuple[str, int]:
            key, data = item
            self.put(key, data)
            return key, len(data)

        for key, n in _bounded_map(one, items, self.max_workers):
            if on_done is not None:
                on_done(key, n)

    def get_many(self, keys: Iterable[str], on_done: OnDone | None = None) -> Iterator[tuple[str, bytes]]:
        """Download concurrently; yields (key, data) as each completes.
        A missing key raises `KeyNotFound`."""

        def one(key: str) -> tuple[str, bytes]:
            return key, self.get(key)

        for key, data in _bounded_map(one, keys, self.max_workers):
            if on_done is not None:
                on_done(key, len(data))
            yield key, data

    def close(self) -> None:
        pass

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def _bounded_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """fn over items on a thread pool, at most 2*workers in flight (so a
    generator of large payloads is not read ahead without bound); results in
    completion order. The first exception stops submission and is raised
    once the running calls have finished."""
    workers = max(1, workers)
    window = 2 * workers
    it = iter(items)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mfgit-transfer")
    pending: set[Future] = set()
    error: BaseException | None = None
    exhausted = False
    try:
        while True:
            while not exhausted and error is None and len(pending) < window:
                try:
                    item = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending.add(pool.submit(fn, item))
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                exc = fut.exception()
                if exc is not None:
                    if error is None:
                        error = exc
                    continue
                if error is None:
                    yield fut.result()
        if error is not None:
            raise error
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


# -- URLs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteURL:
    scheme: str  # "file" | "s3"
    path: str | None  # absolute local path (scheme "file")
    bucket: str | None  # scheme "s3"
    prefix: str  # s3 key prefix without leading/trailing "/"; "" for file

    @property
    def display(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return str(self.path)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_OTHER_SCHEMES = {
    "http", "https", "ssh", "git", "git+ssh", "ssh+git", "ftp", "ftps", "sftp", "rsync", "scp",
    "gs", "gcs", "az", "azure", "abfs", "abfss", "wasb", "wasbs", "hdfs", "webdav", "dav",
    "s3a", "s3n", "r2", "minio",
}
_SCP_LIKE = re.compile(r"^[^/:]*@[^/:]+:")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def _redact(url: str) -> str:
    """The URL with any user:password@ part replaced, for error messages."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/@]*@", r"\1***@", url)


def check_bucket_name(name: str) -> str | None:
    """Why `name` breaks the S3 general purpose bucket naming rules, or None."""
    if not 3 <= len(name) <= 63:
        return "bucket names are 3 to 63 characters long"
    if not re.fullmatch(r"[a-z0-9.\-]+", name):
        return "bucket names use only lowercase letters, digits, '.' and '-'"
    if not (name[0].isalnum() and name[-1].isalnum()):
        return "bucket names begin and end with a letter or digit"
    if ".." in name:
        return "bucket names have no two adjacent periods"
    if ".-" in name or "-." in name:
        return "bucket names have no '.' next to '-'"
    if _IPV4.match(name):
        return "bucket names are not IP addresses"
    for p in ("xn--", "sthree-", "amzn-s3-demo-"):
        if name.startswith(p):
            return f"bucket names do not start with {p!r}"
    for s in ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"):
        if name.endswith(s):
            return f"bucket names do not end with {s!r}"
    return None


def parse_remote_url(url: str, base: str | None = None) -> RemoteURL:
    """Parse a remote URL: a local path (absolute, or relative to `base`,
    default the current directory), ``file:///abs/path`` or
    ``s3://bucket[/prefix]``. Raises `InvalidRemoteURL` with the reason.

    No expansion of any kind (``~``, ``$VAR``) is done."""
    if not isinstance(url, str) or url.strip() == "":
        raise InvalidRemoteURL(str(url) if isinstance(url, str) else repr(url), "it is empty")
    shown = _redact(url)
    if _CONTROL.search(url):
        raise InvalidRemoteURL(shown, "it contains NUL or a control character")
    if url != url.strip():
        raise InvalidRemoteURL(shown, "it has leading or trailing whitespace")

    m = _SCHEME.match(url)
    scheme = m.group(1).lower() if m else None
    if scheme is not None and len(scheme) == 1 and os.name == "nt":
        scheme = None  # C:\path on Windows
    if scheme is not None and not (scheme in ("file", "s3") or scheme in _OTHER_SCHEMES or url[m.end():].startswith("//")):
        scheme = None  # "a:b" with no "//": a relative path with a colon
    if scheme is not None and url[m.end():].startswith("//") and "@" in url[m.end() + 2:].split("/", 1)[0]:
        raise InvalidRemoteURL(shown, "credentials never go in URLs; use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                                      "a profile or ~/.aws/credentials")
    if scheme is not None and scheme not in ("file", "s3"):
        raise InvalidRemoteURL(shown, f"{scheme}: remotes are not supported; use a path, file:///path or s3://bucket/prefix")
    if scheme is None:
        if _SCP_LIKE.match(url):
            raise InvalidRemoteURL(shown, "ssh remotes (user@host:path) are not supported; use a path, file:// or s3://")
        return RemoteURL("file", os.path.abspath(os.path.join(base or os.getcwd(), url)), None, "")

    rest = url[m.end():]
    if not rest.startswith("//"):
        raise InvalidRemoteURL(shown, f"write {scheme}://…")
    rest = rest[2:]
    authority, _slash, path = rest.partition("/")
    if "?" in rest or "#" in rest:
        raise InvalidRemoteURL(shown, "query strings and fragments are not supported")

    if scheme == "file":
        if authority not in ("", "localhost"):
            raise InvalidRemoteURL(shown, f"file URLs with a host ({authority}) are not supported; use file:///path")
        local = unquote("/" + path)
        if _CONTROL.search(local):
            raise InvalidRemoteURL(shown, "it contains NUL or a control character")
        if local == "/" and not path:
            raise InvalidRemoteURL(shown, "it names no path")
        return RemoteURL("file", os.path.normpath(local) if local != "/" else "/", None, "")

    if scheme == "s3":
        bucket = authority
        if not bucket:
            raise InvalidRemoteURL(shown, "it names no bucket")
        why = check_bucket_name(bucket)
        if why:
            raise InvalidRemoteURL(shown, f"invalid bucket name {bucket!r}: {why}")
        prefix = path.strip("/")
        if prefix:
            if "\\" in prefix:
                raise InvalidRemoteURL(shown, "the prefix contains a backslash")
            for seg in prefix.split("/"):
                if seg == "":
                    raise InvalidRemoteURL(shown, "the prefix has an empty segment ('//')")
                if seg in (".", ".."):
                    raise InvalidRemoteURL(shown, f"the prefix has a {seg!r} segment")
        return RemoteURL("s3", None, bucket, prefix)

    raise AssertionError(scheme)  # pragma: no cover - every scheme is handled above


S3_OPTION_NAMES = ("endpoint_url", "region", "profile", "access_key_id", "secret_access_key",
                   "addressing_style", "connect_timeout", "read_timeout")


def open_transport(url: str, s3_options: dict | None = None) -> Transport:
    """The transport for a remote URL.

    `s3_options` (S3 only, all optional): endpoint_url, region, profile,
    access_key_id, secret_access_key, addressing_style ("path" by default
    when an endpoint is given), connect_timeout, read_timeout. What is not
    given comes from boto3's usual chain (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    AWS_PROFILE, ~/.aws/config and credentials, instance roles)."""
    parsed = parse_remote_url(url)
    if parsed.scheme == "file":
        from mfgit.remote.local import LocalTransport

        return LocalTransport(parsed.path)
    from mfgit.remote.s3 import S3Transport

    return S3Transport(parsed.bucket, parsed.prefix, s3_options or {})
