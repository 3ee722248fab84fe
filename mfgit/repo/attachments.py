"""Attachments: named files a site commits besides its adapter.

A public attachment is a blob object, stored and moved like the extra files
of a manifest, or, when it is a safetensors file, a header blob and one
tensor object per tensor, stored like an adapter's tensors
(mfgit.repo.attachment_tensors); the commit names its objects by id
(Commit.attachment_ids), so reachability, push, fetch and gc carry them with
no other rule. A private one is recorded by size and
SHA-256 digest only; its bytes are kept in this repository under
``private/<sha256>`` — outside the object store, so nothing that moves
objects ever sees them — and nowhere else. Both kinds are part of the
commit, so of its id and of what a signature covers (docs/design.md,
"Attachments").
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from mfgit.errors import (AttachmentNotFound, AttachmentPrivate, CorruptAttachment, InvalidAttachment, MfgitError,
                          WrongObjectType)
from mfgit.objects.model import Commit, attachment_object_ids, is_object_id, object_id
from mfgit.objects.schema import SchemaError, attachment_name_problem
from mfgit.objects.schema import attachments as check_attachments
from mfgit.repo import attachment_tensors
from mfgit.store.disk import FRESHEN_AFTER  # a reused copy is freshened by the objects' rule
from mfgit.store.fileio import atomic_write

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository

PRIVATE_DIR = "private"


@dataclass(frozen=True)
class Staged:
    """One attachment read from the user's files, not yet stored."""

    name: str
    data: bytes
    private: bool
    path: str

    @cached_property
    def parts(self) -> attachment_tensors.Split | None:
        """A public safetensors file cut into header and tensors (hashed once, however often
        the entry is asked for); None for a file kept as one blob, and for a private one."""
        return None if self.private else attachment_tensors.split(self.name, self.data)

    def entry(self) -> dict[str, Any]:
        """Its record in the commit (docs/design.md, "Attachments")."""
        e: dict[str, Any] = {"name": self.name, "size": len(self.data),
                             "digest": hashlib.sha256(self.data).hexdigest(), "private": self.private}
        if not self.private:
            if self.parts is not None:
                e.update(self.parts.fields())
            else:
                e["id"] = object_id("blob", self.data)
        return e


def _read_regular(path: Path, name: str) -> bytes:
    # Links inside a folder were refused by the walk; here a FIFO or a
    # device would block or never end, so only a regular file is read
    # (O_NONBLOCK: opening a FIFO to find out must not wait for a writer).
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise InvalidAttachment(name, "no such file or folder", str(path)) from None
    except OSError as e:
        raise InvalidAttachment(name, f"cannot be read: {e.strerror}", str(path)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidAttachment(name, "not a regular file or a folder", str(path))
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def _files_of(name: str, path: Path) -> list[tuple[str, Path]]:
    """(attachment name, file) for PATH: itself, or each file of a folder as NAME/relpath."""
    if not os.path.lexists(path):
        raise InvalidAttachment(name, "no such file or folder", str(path))
    if not path.is_dir():
        return [(name, path)]
    out: list[tuple[str, Path]] = []
    def unreadable(e: OSError) -> None:  # os.walk would skip the folder silently: a partial commit
        raise InvalidAttachment(name, f"cannot be read: {e.strerror or e}", str(e.filename or path))

    for root, dirs, files in os.walk(path, onerror=unreadable, followlinks=False):
        dirs.sort()
        for entry in [*dirs, *files]:
            p = Path(root) / entry
            if p.is_symlink():
                # What a link names can change between listing and commit, or
                # lie outside the folder: only the folder's own files are taken.
                raise InvalidAttachment(name, f"the folder holds a symbolic link ({p.relative_to(path)}); "
                                        "attach what it names instead", str(path))
        for f in sorted(files):
            rel = (Path(root) / f).relative_to(path).as_posix()
            out.append((f"{name}/{rel}", Path(root) / f))
    if not out:
        raise InvalidAttachment(name, "the folder holds no files", str(path))
    return out


def stage(attachments: Mapping[str, Any] | None, private: Mapping[str, Any] | None) -> list[Staged]:
    """Read the user's attachments (name → file or folder), checked, sorted by name.

    Everything is checked before anything is stored: names (the schema's
    rule, and each given once), files that exist and can be read, and the
    whole list as the commit will hold it.
    """
    staged: dict[str, Staged] = {}
    for is_private, given in ((False, attachments or {}), (True, private or {})):
        for name, path in given.items():
            problem = attachment_name_problem(name)
            if problem:
                raise InvalidAttachment(str(name), f"cannot name an attachment: {problem}")
            for full, file in _files_of(name, Path(path)):
                problem = attachment_name_problem(full)
                if problem:
                    raise InvalidAttachment(full, f"cannot name an attachment: {problem}", str(file))
                if full in staged:
                    raise InvalidAttachment(full, "is given twice", str(file))
                staged[full] = Staged(full, _read_regular(file, full), is_private, str(file))
    out = [staged[n] for n in sorted(staged)]
    if out:
        try:
            check_attachments([s.entry() for s in out])
        except SchemaError as e:
            raise InvalidAttachment(_name_in(e, out), e.reason) from None
    return out


def _name_in(e: SchemaError, staged: list[Staged]) -> str:
    # "attachments[3].name" → the name of entry 3, for a message the user can act on.
    if e.field.startswith("attachments["):
        try:
            return staged[int(e.field[len("attachments["):].split("]")[0])].name
        except (ValueError, IndexError):
            pass
    return "attachments"


def store(repo: "BaseRepository", staged: list[Staged],
          entries: tuple[dict[str, Any], ...] | None = None) -> tuple[dict[str, Any], ...]:
    """Store each attachment's bytes (public: a blob, or a header and tensors; private: this repository's private/)
    and return the commit's entries (`entries`, when the caller computed them already).
    Called before the commit object is written (objects before refs)."""
    given = entries
    entries = []
    for i, s in enumerate(staged):
        e = s.entry() if given is None else given[i]
        if s.private:
            write_private(repo, e["digest"], s.data)
        elif s.parts is not None:
            attachment_tensors.store_split(repo.store, s.parts)
        else:
            bid = repo.store.put("blob", s.data)  # an existing blob is freshened (git's rule)
            assert bid == e["id"], (bid, e["id"])
        entries.append(e)
    return tuple(entries)


def private_path(repo: "BaseRepository", digest: str) -> Path | None:
    """Where the bytes of a private attachment are kept (None without a repository on disk)."""
    return None if repo.gitdir is None else repo.gitdir / PRIVATE_DIR / digest


def write_private(repo: "BaseRepository", digest: str, data: bytes) -> None:
    path = private_path(repo, digest)
    if path is None:
        raise InvalidAttachment(digest, "a private attachment needs a repository on disk to be kept in")
    # gc sweeps private/ under the store's exclusive lock: holding the writer
    # lock from here until the commit's ref lands keeps it from deleting a copy
    # this commit is about to name.
    repo.store.hold_writer_lock()
    if read_private(path, digest) is not None and _freshen(path):
        return  # written once, like an object: the same digest is the same bytes
    # Readable by its owner only: these are the bytes that must not leave the site.
    atomic_write(path, data, mode=0o400)


def _freshen(path: Path) -> bool:
    """Renew the mtime of a reused copy, as a reused object's (git's rule): gc's grace period counts from
    it, for writers the lock cannot see. False when it cannot be touched (then it is written again)."""
    try:
        if time.time() - os.stat(path).st_mtime >= FRESHEN_AFTER:
            os.utime(path)
    except OSError:
        return False
    return True


def private_files(repo: "BaseRepository") -> list[tuple[str, Path]]:
    """(digest, path) for each regular file in private/ named like a SHA-256 digest, by digest: what gc may
    sweep. Anything else there (a temporary file of an interrupted write, a file a person put) is left alone."""
    root = None if repo.gitdir is None else repo.gitdir / PRIVATE_DIR
    try:
        names = sorted(os.listdir(root)) if root is not None else []
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if is_object_id(name):
            try:
                if stat.S_ISREG(os.lstat(root / name).st_mode):
                    out.append((name, root / name))
            except FileNotFoundError:
                continue
    return out


def read_private(path: Path, digest: str) -> bytes | None:
    """The bytes at `path` if they have `digest`; None when absent or damaged."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
    finally:
        os.close(fd)
    return data if hashlib.sha256(data).hexdigest() == digest else None


def private_state(repo: "BaseRepository", entry: dict[str, Any]) -> str:
    """"present", "absent" or "corrupt": the local copy of a private attachment."""
    path = private_path(repo, entry["digest"])
    if path is None or not os.path.lexists(path):
        return "absent"
    return "present" if read_private(path, entry["digest"]) is not None else "corrupt"


def listing(repo: "BaseRepository", rev: str = "HEAD") -> list[dict[str, Any]]:
    """The attachments of `rev`: each entry of the commit and whether its bytes are here (``present``)."""
    commit = repo.read_commit(repo.resolve(rev))
    out = []
    for a in commit.attachments:
        present = (private_state(repo, a) == "present" if a["private"]
                   else all(repo.store.has(o) for o in attachment_object_ids(a)))
        out.append({**a, "present": present})
    return out


def read(repo: "BaseRepository", rev: str, name: str) -> bytes:
    """The bytes of attachment `name` of `rev`, checked against the size and digest the commit records."""
    cid = repo.resolve(rev)
    commit, entry = entry_of(repo, cid, name)
    return entry_bytes(repo, cid, commit, entry)


def entry_of(repo: "BaseRepository", cid: str, name: str) -> tuple[Commit, dict[str, Any]]:
    """Commit `cid` and its entry for attachment `name` (AttachmentNotFound when it has none)."""
    commit = repo.read_commit(cid)
    entry = next((a for a in commit.attachments if a["name"] == name), None)
    if entry is None:
        raise AttachmentNotFound(cid, name, tuple(a["name"] for a in commit.attachments))
    return commit, entry


def read_recorded(repo: "BaseRepository", cid: str, name: str, digest: str) -> bytes:
    """The bytes of attachment `name` of commit `cid`, read again for a record that names their `digest`
    (what a merge read): the same bytes, or an error — private here, missing, or other bytes."""
    commit, entry = entry_of(repo, cid, name)
    if entry["digest"] != digest:
        raise CorruptAttachment(cid, name, digest, entry["digest"], "the commit records another digest")
    return entry_bytes(repo, cid, commit, entry)


def entry_bytes(repo: "BaseRepository", cid: str, commit: Commit, entry: dict[str, Any]) -> bytes:
    if entry["private"]:
        path = private_path(repo, entry["digest"])
        if path is None or not os.path.lexists(path):
            raise AttachmentPrivate(cid, entry["name"], commit.site)
        data = read_private(path, entry["digest"])
        if data is None:
            raise CorruptAttachment(cid, entry["name"], entry["digest"], _digest_of(path), str(path))
        return data
    data = _public_bytes(entry, _store_fetch(repo, missing_ok=False), cid)
    assert data is not None  # a missing object raised
    return data


def _store_fetch(repo: "BaseRepository", *, missing_ok: bool) -> "attachment_tensors.Fetch":
    """fetch(object id, kind) from the store, each object checked against its id (invariant 2);
    with `missing_ok` a missing or damaged object gives None (fsck reports it by its own checks)."""
    def fetch(oid: str, want: str):
        try:
            kind, payload = repo.store.get(oid)
        except MfgitError:
            if missing_ok:
                return None
            raise
        if kind != want:
            raise WrongObjectType(oid, want, kind)
        return payload
    return fetch


def _public_bytes(entry: dict[str, Any], fetch: "attachment_tensors.Fetch", cid: str) -> bytes | None:
    """A public entry's bytes, checked against its size and digest (CorruptAttachment when they differ);
    None when `fetch` lacks an object."""
    if attachment_tensors.is_split(entry):
        return attachment_tensors.join(entry, fetch, cid)
    payload = fetch(entry["id"], "blob")
    if payload is None:
        return None
    data = bytes(payload)
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry["digest"] or len(data) != entry["size"]:
        raise CorruptAttachment(cid, entry["name"], entry["digest"], actual, f"blob {entry['id'][:12]}")
    return data


def _digest_of(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        return f"unreadable: {e.strerror}"


def same_attachments(a: tuple[dict[str, Any], ...], b: tuple[dict[str, Any], ...]) -> bool:
    return [dict(x) for x in a] == [dict(x) for x in b]


def check_private(repo: "BaseRepository", commit_ids: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(absent, corrupt): the private attachments of `commit_ids` whose bytes are not here —
    every clone, by design, so never damage — and those whose kept copy fails its digest (damage)."""
    absent: list[dict[str, Any]] = []
    corrupt: list[dict[str, Any]] = []
    for cid in commit_ids:
        try:
            commit = repo.read_commit(cid)
        except Exception:  # noqa: BLE001 - an unreadable commit is fsck's to report as such
            continue
        for a in commit.attachments:
            if not a["private"]:
                continue
            state = private_state(repo, a)
            record = {"commit": cid, "name": a["name"], "digest": a["digest"], "site": commit.site}
            if state == "absent":
                absent.append(record)
            elif state == "corrupt":
                path = private_path(repo, a["digest"])
                corrupt.append({**record, "path": str(path), "actual": _digest_of(path)})
    return absent, corrupt


def check_public(repo: "BaseRepository", commit_ids: list[str]) -> list[dict[str, Any]]:
    """The public attachments of `commit_ids` whose objects, all present, do not give back the
    recorded size and digest (each commit's entry once per distinct record; a missing object is
    reachability's to report)."""
    fetch = _store_fetch(repo, missing_ok=True)
    done: set[str] = set()
    corrupt: list[dict[str, Any]] = []
    for cid in commit_ids:
        try:
            commit = repo.read_commit(cid)
        except MfgitError:  # an unreadable commit is fsck's to report as such
            continue
        for a in commit.attachments:
            if a["private"]:
                continue
            key = attachment_tensors.record_key(a)
            if key in done:
                continue
            done.add(key)
            try:
                _public_bytes(a, fetch, cid)
            except (CorruptAttachment, WrongObjectType) as e:
                corrupt.append({"commit": cid, "name": a["name"], "digest": a["digest"], "error": str(e)})
    return corrupt
