"""A remote in a folder: a local directory or a shared network folder.

Key ``a/b/c`` is the file ``ROOT/a/b/c``. Writes go to a temporary file
(``.tmp-…``) in the same directory, are fsynced, renamed over the target
with os.replace and the directory is fsynced, so a reader sees the old file
or the whole new one. Compare-and-swap (`put_if`) holds an O_EXCL lock file
``ROOT/a/b/c.lock`` around read-compare-write; a lock that stays longer than
`lock_timeout` seconds is reported as `LockHeld` (a crashed writer: remove
the file). Version tokens are the SHA-256 of the content.

Keys never leave the root: `check_key` refuses ``..``, absolute keys and
the like, and a key whose directory resolves outside the root through a
symbolic link, or that is itself a symbolic link, is refused too.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shlex
import socket
import stat
import time

from mfgit.errors import InvalidKey, KeyNotFound, LockHeld, PreconditionFailed, RemoteError, RemoteUnreachable
from mfgit.remote.transport import Transport, check_key, check_prefix, is_valid_key
from mfgit.store.fileio import fsync_dir

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalTransport(Transport):
    max_workers = 8

    def __init__(self, root: str, *, lock_timeout: float = 5.0):
        root = os.path.abspath(root)
        self.root = root
        self.url = root
        self.lock_timeout = lock_timeout
        if not os.path.exists(root):
            raise RemoteUnreachable(root, f"the folder does not exist; create it with: mfgit init --bare {shlex.quote(root)}")
        if not os.path.isdir(root):
            raise RemoteError(root, "is not a folder")
        self._real_root = os.path.realpath(root)

    # -- paths ---------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        check_key(key, self.url)
        path = os.path.join(self.root, *key.split("/"))
        parent = os.path.realpath(os.path.dirname(path))
        if parent != self._real_root and not parent.startswith(self._real_root + os.sep):
            raise InvalidKey(key, "its folder leads outside the remote through a symbolic link", self.url)
        return path

    def _fail(self, what: str, key: str, exc: OSError) -> RemoteError:
        return RemoteError(self.url, f"cannot {what} {key}: {exc.strerror or exc}")

    def _read(self, key: str, path: str) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_BINARY)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidKey(key, "is a symbolic link", self.url) from None
            raise self._fail("read", key, exc) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        except IsADirectoryError:
            return None
        except OSError as exc:
            raise self._fail("read", key, exc) from None
        finally:
            os.close(fd)

    def _write(self, key: str, path: str, data: bytes) -> None:
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise self._fail("write", key, exc) from None
        tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise self._fail("write", key, exc) from None
        fsync_dir(directory)

    # -- the interface -------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        data = self._read(key, self._path(key))
        if data is None:
            raise KeyNotFound(key, self.url)
        return data

    def put(self, key: str, data: bytes) -> None:
        self._write(key, self._path(key), bytes(data) if not isinstance(data, bytes) else data)

    def exists(self, key: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self._path(key)).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise self._fail("check", key, exc) from None

    def list(self, prefix: str) -> list[str]:
        check_prefix(prefix, self.url)
        directory = prefix.rpartition("/")[0]
        top = os.path.join(self.root, *directory.split("/")) if directory else self.root
        real = os.path.realpath(top)
        if real != self._real_root and not real.startswith(self._real_root + os.sep):
            return []
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            dirnames[:] = [d for d in dirnames if not d.startswith(".tmp-")]
            rel = os.path.relpath(dirpath, self.root)
            base = "" if rel == os.curdir else rel.replace(os.sep, "/") + "/"
            for name in filenames:
                key = base + name
                if not key.startswith(prefix) or not is_valid_key(key):
                    continue  # lock files, temporary files, foreign names
                if os.path.islink(os.path.join(dirpath, name)):
                    continue
                out.append(key)
        out.sort()
        return out

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return
        except OSError as exc:
            if exc.errno in (errno.EISDIR, errno.EPERM) and os.path.isdir(path):
                return  # a folder is not a key
            raise self._fail("delete", key, exc) from None
        fsync_dir(os.path.dirname(path))

    def is_empty(self) -> bool:
        try:
            with os.scandir(self.root) as entries:
                return next(entries, None) is None
        except OSError as exc:
            raise RemoteError(self.url, f"cannot list the folder: {exc.strerror or exc}") from None

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        data = self._read(key, self._path(key))
        if data is None:
            return None
        return data, _digest(data)

    def put_if(self, key: str, data: bytes, expected: str | None) -> str:
        path = self._path(key)
        data = bytes(data) if not isinstance(data, bytes) else data
        lock = path + ".lock"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as exc:
            raise self._fail("write", key, exc) from None
        self._lock(key, lock)
        try:
            current = self._read(key, path)
            version = _digest(current) if current is not None else None
            if version != expected:
                raise PreconditionFailed(key, expected, self.url)
            self._write(key, path, data)
            return _digest(data)
        finally:
            try:
                os.unlink(lock)
            except OSError:
                pass

    def _lock(self, key: str, lock: str) -> None:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.001
        while True:
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
            except FileExistsError:
                if time.monotonic() >= deadline:
                    raise LockHeld(lock) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            except OSError as exc:
                raise self._fail("lock", key, exc) from None
            try:
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            except OSError:
                pass
            finally:
                os.close(fd)
            return
