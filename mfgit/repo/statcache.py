"""The stat cache: re-committing an unchanged adapter reads no tensor.

For each adapter directory committed, remember the stat of every file
(size, mtime_ns, inode, ctime_ns), an XXH3-128 of the config and of the
safetensors header, and the adapter id that resulted. If all still match,
the adapter id is reused without reading or hashing the tensors.

The cache may skip work but never decides what a commit records on its own
word. Each entry carries an HMAC-SHA256 made with a random key kept beside
the cache (``statcache.key``, mode 0600, created on first use), so an entry
mfgit did not write — a poisoned ``statcache.json`` naming another adapter —
is ignored; and on a hit the cached adapter's manifest must agree with the
files on disk (config, tensor names, dtypes and shapes, safetensors metadata,
extra files by content) before its id is reused. The file is disposable: a
missing, unreadable or malformed cache or entry only costs a re-read.

Racy-git rule: a file modified within the same timestamp tick as the cache
write could be changed again without its mtime moving. Entries whose files
are younger than ``RACY_NS`` (100 ms) at the time the cache was written are never
trusted; they are re-read next time, then cached for good.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any

import xxhash

from mfgit.errors import MfgitError
from mfgit.formats import peft as peftfmt
from mfgit.formats import safetensors as st
from mfgit.objects.model import Adapter, decode_object, is_object_id, object_id
from mfgit.store import DiskStore, ObjectStore
from mfgit.store.fileio import atomic_write, write_new_file

RACY_NS = 100_000_000  # 100 ms, far above the kernel timestamp tick (<= 10 ms)
KEY_NAME = "statcache.key"
KEY_BYTES = 32
_MAX_HEADER = 100_000_000


def file_stats(paths: list[Path]) -> dict[str, list[int]]:
    out = {}
    for p in paths:
        s = p.stat()
        out[p.name] = [s.st_size, s.st_mtime_ns, s.st_ino, s.st_ctime_ns]
    return out


def _header_prefix(weights_path: Path) -> tuple[bytes, int]:
    """The first 8 + header-length bytes of a safetensors file (8 if the length is absurd), and its size."""
    with open(weights_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) == 8:
            n = int.from_bytes(head, "little")
            if n < _MAX_HEADER:
                head += f.read(n)
    return head, size


def quick_digest(config_path: Path, weights_path: Path) -> str:
    h = xxhash.xxh3_128()
    h.update(config_path.read_bytes())
    h.update(_header_prefix(weights_path)[0])
    return h.hexdigest()


def _read_key(path: Path) -> bytes | None:
    """The cache key, or None when there is none fit for use (absent, a link, the wrong size, readable by others)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        s = os.fstat(fd)
        if not stat.S_ISREG(s.st_mode) or s.st_mode & 0o077 or s.st_size != KEY_BYTES:
            return None
        key = os.read(fd, KEY_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return key if len(key) == KEY_BYTES else None


def _well_formed(key: Any, entry: Any) -> bool:
    if not (isinstance(key, str) and os.path.isabs(key) and "\0" not in key and isinstance(entry, dict)):
        return False
    try:
        key.encode("utf-8")  # status prints it
    except UnicodeEncodeError:
        return False
    files = entry.get("files")
    return (isinstance(files, dict) and all(
                isinstance(n, str) and isinstance(s, list) and len(s) == 4
                and all(isinstance(v, int) and not isinstance(v, bool) for v in s) for n, s in files.items())
            and isinstance(entry.get("digest"), str)
            and isinstance(entry.get("adapter"), str) and is_object_id(entry["adapter"])
            and isinstance(entry.get("written_ns"), int) and not isinstance(entry["written_ns"], bool)
            and isinstance(entry.get("mac"), str))


class StatCache:
    """Adapter directory → (file stats, quick digest, adapter id), each entry authenticated.

    ``lookup`` snapshots the stats before the caller reads the files;
    ``record`` stores that snapshot, and records nothing if the files changed
    in between (a checkpoint saved while mfgit read the previous one), so an
    entry never pairs the stats of new bytes with the id of old ones.
    `store` holds the adapters the entries name (default: the objects folder
    beside the cache file).
    """

    def __init__(self, path: Path, store: ObjectStore | None = None):
        self.path = path
        self._store = store
        self._key_path = path.with_name(KEY_NAME)
        self._key = _read_key(self._key_path)
        self._snapshots: dict[str, dict[str, list[int]] | None] = {}
        self.entries: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        if self._key is None:
            return {}
        try:
            doc = json.loads(self.path.read_bytes())
        except (OSError, ValueError, RecursionError):
            return {}  # disposable: anything unreadable is a cold cache
        if not isinstance(doc, dict):
            return {}
        return {k: e for k, e in doc.items() if _well_formed(k, e) and hmac.compare_digest(e["mac"], self._mac(k, e))}

    def _mac(self, key: str, entry: dict[str, Any]) -> str:
        assert self._key is not None
        signed = [key, entry["files"], entry["digest"], entry["adapter"], entry["written_ns"]]
        msg = json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    @staticmethod
    def key(directory: Path) -> str:
        return str(directory.resolve())

    def lookup(self, directory: Path, files: list[Path], digest_fn) -> str | None:
        """The adapter id committed from `directory` if its `files` are unchanged and agree with it, else None.

        `files` are the config, the weights, then the extra files.
        """
        key = self.key(directory)
        try:
            stats = file_stats(files)
        except OSError:
            stats = None
        self._snapshots[key] = stats
        entry = self.entries.get(key)
        if not entry or stats is None:
            return None
        if stats != entry["files"]:
            return None
        written = entry["written_ns"]
        if any(s[1] >= written - RACY_NS for s in stats.values()):
            return None
        if digest_fn() != entry["digest"]:
            return None
        if not self._agrees(entry["adapter"], files):
            return None
        return entry["adapter"]

    def _agrees(self, adapter_id: str, files: list[Path]) -> bool:
        """Whether the stored manifest `adapter_id` describes `files` in all that can be checked without the tensors."""
        store = self._store if self._store is not None else DiskStore(self.path.parent / "objects")
        try:
            adapter = decode_object(adapter_id, *store.get(adapter_id))
            if not isinstance(adapter, Adapter):
                return False
            prefix, size = _header_prefix(files[1])
            header = st.parse_header(prefix, size, str(files[1]))
            if adapter.config != peftfmt.read_config(files[0]) or adapter.metadata != header.metadata:
                return False
            stored = {n: (t.get("dtype"), list(t.get("shape", ()))) for n, t in adapter.tensors.items()}
            if stored != {i.name: (i.dtype, list(i.shape)) for i in header.tensors.values()}:
                return False
            extras = {f.name: f for f in files[2:]}
            return set(adapter.files) == set(extras) and all(
                adapter.files[n] == object_id("blob", f.read_bytes()) for n, f in extras.items())
        except (MfgitError, OSError, ValueError, TypeError, AttributeError):
            return False  # anything unexpected: read the files again

    def record(self, directory: Path, files: list[Path], digest: str, adapter_id: str) -> None:
        key = self.key(directory)
        try:
            stats = file_stats(files)
        except OSError:
            return
        if key in self._snapshots and self._snapshots.pop(key) != stats:
            return  # the files changed while they were read: cache nothing
        if self._key is None:
            self._key = self._new_key()
            if self._key is None:
                return
            self.entries = {}  # entries under another key are not ours
        entry: dict[str, Any] = {"files": stats, "digest": digest, "adapter": adapter_id, "written_ns": time.time_ns()}
        entry["mac"] = self._mac(key, entry)
        self.entries[key] = entry
        # Losing the cache only costs a re-read, so it is written atomically
        # but needs no lock.
        try:
            atomic_write(self.path, json.dumps(self.entries, sort_keys=True).encode())
        except OSError:
            pass

    def _new_key(self) -> bytes | None:
        """Make the key (mode 0600 from its first byte on); None if the folder cannot hold it."""
        try:
            tmp = write_new_file(self._key_path, [secrets.token_bytes(KEY_BYTES)], sync=True, mode=0o600)
        except OSError:
            return None
        try:
            if os.path.lexists(self._key_path):
                # A key unfit for use (a link, the wrong size, readable by others): replaced, its entries were never trusted.
                os.replace(tmp, self._key_path)
            else:
                try:
                    os.link(tmp, self._key_path)  # only if still absent: a key another process made first wins
                except FileExistsError:
                    pass
                except OSError:
                    os.replace(tmp, self._key_path)  # a filesystem without hard links
        except OSError:
            return None
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return _read_key(self._key_path)

    def sources(self) -> dict[str, Any]:
        return dict(self.entries)
