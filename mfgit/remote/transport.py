"""The one small interface to a remote's bytes, and the rules for its keys.

A remote is a flat key → bytes store. Keys are relative, ``/``-separated
paths (``config``, ``refs/heads/main``, ``objects/ab/cdef…``). Two
implementations: a folder (`mfgit.remote.local.LocalTransport`, also for a
shared network folder) and S3-compatible object storage
(`mfgit.remote.s3.S3Transport`); `mfgit.remote.registry` is the one module
that knows them.

Contract (tests/test_transport_contract.py runs it against both):

* ``get`` raises `KeyNotFound` for an absent key.
* ``put`` is atomic for readers: they see the old object or the whole new
  one, never a part.
* ``list(prefix)`` returns every key that starts with ``prefix`` (a string
  prefix, recursive), sorted.
* ``delete`` of an absent key is not an error.
* ``is_empty`` is True only when nothing at all is there (a folder with any
  entry, key or not, is not empty).
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

import re
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterable, Iterator

from mfgit.errors import InvalidKey, KeyNotFound, PreconditionFailed
from mfgit.parallel import bounded_map
from mfgit.remote.url import CONTROL

__all__ = ["Transport", "KeyNotFound", "InvalidKey", "PreconditionFailed", "check_key", "check_prefix"]

OnDone = Callable[[str, int], None]


def _check_characters(text: str, remote: str) -> None:
    """The rules keys and listing prefixes share: no control characters, backslashes or absolute paths."""
    if CONTROL.search(text):
        raise InvalidKey(text, "contains NUL or a control character", remote)
    if "\\" in text:
        raise InvalidKey(text, "contains a backslash", remote)
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise InvalidKey(text, "is absolute", remote)


def check_key(key: str, remote: str = "") -> str:
    """Return `key` if it is a valid, confined key; raise `InvalidKey` if not."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(str(key), "empty key", remote)
    _check_characters(key, remote)
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
    _check_characters(prefix, remote)
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
    place: str = "folder"  # what holds a remote, in messages: "folder" or "S3 prefix"
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

    def is_empty(self) -> bool:
        """True if the remote's place holds nothing at all (not even files that are not keys)."""
        return not self.list("")

    def put_many(self, items: Iterable[tuple[str, bytes]], on_done: OnDone | None = None) -> None:
        """Upload concurrently. The first failure is raised after the uploads
        already running finish; nothing further is started."""

        def one(item: tuple[str, bytes]) -> tuple[str, int]:
            key, data = item
            self.put(key, data)
            return key, len(data)

        for key, n in bounded_map(one, items, self.max_workers):
            if on_done is not None:
                on_done(key, n)

    def get_many(self, keys: Iterable[str], on_done: OnDone | None = None) -> Iterator[tuple[str, bytes]]:
        """Download concurrently; yields (key, data) as each completes.
        A missing key raises `KeyNotFound`."""

        def one(key: str) -> tuple[str, bytes]:
            return key, self.get(key)

        for key, data in bounded_map(one, keys, self.max_workers):
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
