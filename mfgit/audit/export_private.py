"""What an export directory must never hold: the bytes of a private attachment.

An exported directory is meant for publishing (a Hub upload, a signed
manifest over every file in it). Export itself writes no attachment, but
``export --force`` writes into a directory that may already hold files,
among them ``attachments/NAME`` from ``checkout --with-attachments``, and
those would be published and signed with it. Such files are found by their
bytes, not their names (a renamed copy is the same secret), and the export
is refused before anything is written: deleting them for the user could
take a file of theirs, so they decide.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from mfgit.errors import MfgitError
from mfgit.objects.model import Commit, is_object_id
from mfgit.repo.attachments import PRIVATE_DIR

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


class PrivateBytesInExport(MfgitError):
    """The export directory holds a file whose bytes are those of a private attachment."""

    def __init__(self, path: str, found: tuple[tuple[str, str], ...], unreadable: bool = False):
        first, what = found[0]
        more = f" and {len(found) - 1} more such file(s)" if len(found) > 1 else ""
        held = (f"{first}, which has the size of private attachment {what} and cannot be read to check its bytes"
                if unreadable else f"{first}, the bytes of private attachment {what}")
        super().__init__(f"{path} holds {held}{more}; an export is for publishing and never holds them")
        self.path = path
        self.found = found  # (file relative to `path`, the attachment's name or digest)
        self.unreadable = unreadable  # the files could not be read: they may be such bytes


def private_digests(repo: "BaseRepository", commit: Commit) -> dict[str, tuple[int, str]]:
    """SHA-256 → (size, how to name it) for every private attachment whose bytes could be here:
    each one kept in this repository, and each one `commit` records (named by its name)."""
    found: dict[str, tuple[int, str]] = {}
    kept = None if repo.gitdir is None else repo.gitdir / PRIVATE_DIR
    if kept is not None and kept.is_dir():
        for p in kept.iterdir():
            if is_object_id(p.name) and p.is_file():
                found[p.name] = (p.stat().st_size, f"sha256:{p.name[:16]}")
    for a in commit.attachments:
        if a["private"]:
            found[a["digest"]] = (a["size"], repr(a["name"]))
    return found


def _sha256(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def private_files_in(out: Path, digests: dict[str, tuple[int, str]],
                     unreadable: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """(relative POSIX path, attachment) for each file under `out` with the bytes of one of `digests`.
    Only files of a private attachment's size are read, so the adapter's weights rarely are. A file of
    such a size that cannot be read is added to `unreadable` (someone with more rights could publish it)."""
    by_size: dict[int, set[str]] = {}
    for digest, (size, _) in digests.items():
        if size == 0:  # no file's absence of bytes is anyone's secret
            continue
        by_size.setdefault(size, set()).add(digest)
    hits: list[tuple[str, str]] = []
    for root, dirs, files in os.walk(out):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            try:
                size = path.stat().st_size  # through a link too: what it names is what is uploaded
            except OSError:
                continue
            if size in by_size:
                digest = _sha256(path)
                if digest is None and unreadable is not None:
                    names = sorted(digests[d][1] for d in by_size[size])
                    unreadable.append((path.relative_to(out).as_posix(), " or ".join(names)))
                elif digest in by_size[size]:
                    hits.append((path.relative_to(out).as_posix(), digests[digest][1]))
    return hits


def refuse_private_bytes(repo: "BaseRepository", commit: Commit, out: str | os.PathLike) -> None:
    """Raise PrivateBytesInExport if the directory `out` holds the bytes of a private attachment."""
    out = Path(out)
    if not out.is_dir():
        return
    unreadable: list[tuple[str, str]] = []
    hits = private_files_in(out, private_digests(repo, commit), unreadable)
    if hits:
        raise PrivateBytesInExport(str(out), tuple(hits))
    if unreadable:
        raise PrivateBytesInExport(str(out), tuple(unreadable), unreadable=True)
