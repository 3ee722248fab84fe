"""The one place that writes repository files.

Every write is: a temporary name in the same directory, the data, fsync,
rename into place, fsync of the directory. A crash at any instant leaves
either the old file or the whole new one (invariant 1). Lock files are
created with O_EXCL so that exactly one writer holds them (invariant 3).
"""

from __future__ import annotations

import errno
import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mfgit.errors import LockHeld

_TMP_PREFIX = ".tmp-"


def fsync_dir(path: str | os.PathLike) -> None:
    # A rename is durable only once its directory entry is: fsync the parent.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def naming_path(path: str | os.PathLike) -> Iterator[None]:
    """Attach `path` to an OSError raised inside that names no file.

    os.write and os.fsync raise ENOSPC or EIO on a descriptor, with no file
    name: without this the user is told the disk is full but not where.
    """
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = os.fspath(path)
        raise


def temp_path_for(path: Path) -> Path:
    return path.with_name(f"{_TMP_PREFIX}{path.name}.{secrets.token_hex(6)}")


def temp_name(directory: str, name: str) -> str:
    """A fresh temporary name for `name` in `directory` (plain strings: one per object written)."""
    return f"{directory}/{_TMP_PREFIX}{name}.{secrets.token_hex(6)}"


# Below this size a file's write-out is left to the batch's syncfs: queuing
# it per file (sync_file_range) costs a syscall and a tiny I/O per object,
# which for many small objects is more than the whole write.
WRITEBACK_MIN = 1 << 16
_JOIN_UP_TO = 1 << 14


def write_new_file(path: Path, chunks, *, sync: bool = True, mode: int = 0o444, tmp: str | None = None,
                   private: bool = True):
    """Write `chunks` to a fresh temporary file beside `path` (or at `tmp`); return its name.

    The caller renames it into place (after a batch fsync when `sync` is
    False). The temporary file is removed if writing fails. `private=False`
    (object files, which hold nothing secret) creates the file with its
    final mode at once, a syscall less per object.
    """
    if tmp is None:
        tmp = temp_path_for(Path(path))
    # Private until complete: the final mode is set only once the bytes are
    # written, so a key file (0600) is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else mode)
    try:
        with naming_path(tmp):
            views = [memoryview(c) for c in chunks]
            total = sum(v.nbytes for v in views)
            if len(views) > 1 and total <= _JOIN_UP_TO:
                views = [memoryview(b"".join(views))]  # one write for a small file
            for mv in views:
                while mv:
                    n = os.write(fd, mv)
                    mv = mv[n:]
            if sync:
                os.fsync(fd)
            elif total >= WRITEBACK_MIN:
                start_writeback(fd)
        if private:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    return tmp


def atomic_write(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically and durably.

    A symbolic link at `path` is replaced itself, never followed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = write_new_file(path, [data], sync=True, mode=mode)
    os.replace(tmp, path)
    fsync_dir(path.parent)



_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    libc = _c_library()
    if not libc or not hasattr(libc, "renameat2"):
        return False
    import ctypes

    if libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system or kernel without it
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def replace_directory(staged: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete directory `staged` at `target` (same file system), replacing what is there.

    A reader sees the old directory or the new one, never a mix: an absent
    target is a plain rename; an existing one is swapped in one step where
    the system can (Linux), else moved aside, replaced and then removed (a
    moment without a target, never a half-written one). The old contents
    are removed afterwards.
    """
    import shutil

    staged, target = Path(staged), Path(target)
    if not target.exists():
        os.rename(staged, target)
    elif not _exchange(staged, target):
        aside = target.with_name(f"{_TMP_PREFIX}{target.name}.old.{secrets.token_hex(6)}")
        os.rename(target, aside)
        os.rename(staged, target)
        os.rename(aside, staged)
    fsync_dir(target.parent)
    if staged.exists():
        shutil.rmtree(staged, ignore_errors=True)


_libc = None


def _c_library():
    """The C library already loaded into the process (False where ctypes cannot reach it).

    Looked up with CDLL(None), not ctypes.util.find_library, which would
    run ldconfig in a subprocess.
    """
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    return _libc


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Start writing a file's dirty pages to the disk, without waiting (Linux).

    sync_file_range(SYNC_FILE_RANGE_WRITE) on `length` bytes from `offset`
    (0: to the end) only queues the write-out: it
    makes nothing durable (the batch's syncfs still does that), but the
    disk works while the next objects are hashed and compressed, and the
    syncfs at the end finds little left to write. A range of less than
    WRITEBACK_MIN bytes is left to that final sync: queued one by one, the
    tensors of an adapter of many small modules cost a syscall and a tiny
    I/O each, more than writing them.
    """
    if 0 < length < WRITEBACK_MIN:
        return  # a few pages: left to the final fsync (see WRITEBACK_MIN)
    libc = _c_library()
    if libc and hasattr(libc, "sync_file_range"):
        import ctypes

        libc.sync_file_range(fd, ctypes.c_longlong(offset), ctypes.c_longlong(length), _SYNC_FILE_RANGE_WRITE)


def sync_filesystem(path: str | os.PathLike) -> None:
    """Flush every dirty page of the filesystem holding `path` (Linux syncfs).

    One syncfs after writing a batch of object files costs one journal
    commit instead of one per file; elsewhere fall back to os.sync().
    """
    libc = _c_library()
    if libc and hasattr(libc, "syncfs"):
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    os.sync()


@contextmanager
def lock_file(path: str | os.PathLike) -> Iterator[int]:
    """Hold `path + '.lock'` (O_EXCL) for the duration; yields its fd.

    The lock is removed on exit, whatever happens inside. A lock left by a
    killed process must be removed by hand (git's rule): we never guess
    whether its owner is still alive.
    """
    lock = Path(str(path) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise LockHeld(str(lock)) from None
    try:
        yield fd
    finally:
        os.close(fd)
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass


def open_for_flock(directory: str | os.PathLike) -> int:
    """A descriptor of `directory` to flock (the directory itself is the lock: no lock file to skip or leave)."""
    return os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def flock_within(fd: int, *, exclusive: bool, timeout: float) -> bool:
    """flock `fd` shared or exclusive, waiting up to `timeout` seconds; False if it was not granted.

    flock locks belong to the open file description and the kernel drops
    them when the last descriptor closes, so a process killed with SIGKILL
    never leaves one behind (unlike a lock file).
    """
    try:
        import fcntl
    except ImportError:  # no flock on this system: writers and gc are not kept apart (the grace period still is)
        return True
    op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = time.monotonic() + max(0.0, timeout)
    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, op)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.05)


def flock_holders(path: str | os.PathLike) -> tuple[int, ...]:
    """Ids of the other processes holding a flock on `path`, where the system says (Linux /proc/locks)."""
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ()
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = set()
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  READ  1234 fd:01:5678 0 EOF"; "->" marks a waiter
        if "FLOCK" in parts and "->" not in parts and want in parts:
            i = parts.index(want)
            if parts[i - 1].isdigit() and int(parts[i - 1]) != os.getpid():
                pids.add(int(parts[i - 1]))
    return tuple(sorted(pids))


def is_temp_name(name: str) -> bool:
    return name.startswith(_TMP_PREFIX)


class LockedFile:
    """git's lock-file protocol for one small file (a ref, the config).

    ``<path>.lock`` is created with O_EXCL; the new content is written to it
    and fsynced (``write()``); ``commit()`` renames it over ``<path>``, which
    both publishes the content atomically and releases the lock. A caller
    that records the change elsewhere (a ref's reflog) does so between the two,
    once the content is durable and before anyone can see it.
    ``rollback()`` (also on any exception in a ``with`` block) removes the
    lock and leaves ``<path>``. Errors name the lock file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock = Path(str(self.path) + ".lock")
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._fd: int | None = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise LockHeld(str(self.lock)) from None

    def write(self, data: bytes) -> None:
        """Write `data` to the lock file and make it durable; nothing is published yet."""
        assert self._fd is not None
        with naming_path(self.lock):
            mv = memoryview(data)
            while mv:
                mv = mv[os.write(self._fd, mv) :]
            os.fsync(self._fd)

    def commit(self, data: bytes | None = None) -> None:
        """Publish what write() wrote (or write `data` first), releasing the lock."""
        assert self._fd is not None
        if data is not None:
            self.write(data)
        fd, self._fd = self._fd, None
        try:
            with naming_path(self.lock):
                os.close(fd)
            os.replace(self.lock, self.path)
        except BaseException:
            # Not published: release the lock, or it would block every later writer.
            try:
                os.unlink(self.lock)
            except OSError:
                pass
            raise
        fsync_dir(self.path.parent)

    def delete_target(self) -> None:
        """Remove <path> (a deleted ref) while holding the lock, then release."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        fsync_dir(self.path.parent)
        self.rollback()

    def rollback(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            try:
                os.unlink(self.lock)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "LockedFile":
        return self

    def __exit__(self, *exc) -> None:
        self.rollback()
