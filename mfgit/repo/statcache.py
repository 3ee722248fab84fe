"""The stat cache: re-committing an unchanged adapter reads no tensor.

For each adapter directory committed, remember the stat of every file
(size, mtime_ns, inode, ctime_ns), an XXH3-128 of the config and of the
safetensors header, and the adapter id that resulted. If all still match,
the adapter id is reused without reading or hashing the tensors.

Racy-git rule: a file modified within the same timestamp tick as the cache
write could be changed again without its mtime moving. Entries whose files
are younger than ``RACY_NS`` (100 ms) at the time the cache was written are never
trusted; they are re-read next time, then cached for good.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import xxhash

from mfgit.store.fileio import atomic_write

RACY_NS = 100_000_000  # 100 ms, far above the kernel timestamp tick (<= 10 ms)


def file_stats(paths: list[Path]) -> dict[str, list[int]]:
    out = {}
    for p in paths:
        st = p.stat()
        out[p.name] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    return out


def quick_digest(config_path: Path, weights_path: Path) -> str:
    h = xxhash.xxh3_128()
    h.update(config_path.read_bytes())
    with open(weights_path, "rb") as f:
        head = f.read(8)
        h.update(head)
        if len(head) == 8:
            n = int.from_bytes(head, "little")
            if n < 100_000_000:
                h.update(f.read(n))
    return h.hexdigest()


class StatCache:
    """Adapter directory → (file stats, quick digest, adapter id).

    ``lookup`` snapshots the stats before the caller reads the files;
    ``record`` stores that snapshot, and records nothing if the files changed
    in between (a checkpoint saved while mfgit read the previous one), so an
    entry never pairs the stats of new bytes with the id of old ones.
    """

    def __init__(self, path: Path):
        self.path = path
        self._snapshots: dict[str, dict[str, list[int]] | None] = {}
        try:
            self.entries: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            self.entries = {}
        if not isinstance(self.entries, dict):
            self.entries = {}

    @staticmethod
    def key(directory: Path) -> str:
        return str(directory.resolve())

    def lookup(self, directory: Path, files: list[Path], digest_fn) -> str | None:
        key = self.key(directory)
        try:
            stats = file_stats(files)
        except OSError:
            stats = None
        self._snapshots[key] = stats
        entry = self.entries.get(key)
        if not entry or stats is None:
            return None
        if stats != entry.get("files"):
            return None
        written = entry.get("written_ns", 0)
        if any(s[1] >= written - RACY_NS for s in stats.values()):
            return None
        if digest_fn() != entry.get("digest"):
            return None
        return entry.get("adapter")

    def record(self, directory: Path, files: list[Path], digest: str, adapter_id: str) -> None:
        key = self.key(directory)
        try:
            stats = file_stats(files)
        except OSError:
            return
        if key in self._snapshots and self._snapshots.pop(key) != stats:
            return  # the files changed while they were read: cache nothing
        self.entries[key] = {
            "files": stats,
            "digest": digest,
            "adapter": adapter_id,
            "written_ns": time.time_ns(),
        }
        # Losing the cache only costs a re-read, so it is written atomically
        # but needs no lock.
        try:
            atomic_write(self.path, json.dumps(self.entries, sort_keys=True).encode())
        except OSError:
            pass

    def sources(self) -> dict[str, Any]:
        return dict(self.entries)
