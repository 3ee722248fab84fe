"""Branches and tags: listing, creating, deleting, switching, and the names that point at commits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mfgit.errors import BranchInUse, MfgitError, NotFullyMerged, RefExists, RefNotFound
from mfgit.objects.model import Tag
from mfgit.objects.timestamp import utc_now
from mfgit.refs import ANY, HEADS, REMOTES, TAGS, check_branch_name
from mfgit.repo.history import is_ancestor

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository, Signer


def branches(repo: "BaseRepository", *, remote: bool = False) -> list[dict[str, Any]]:
    prefix = REMOTES if remote else HEADS
    current = repo.head_branch()
    out = []
    for ref, oid in repo.refs.items(prefix).items():
        name = ref[len(prefix):]
        try:
            msg = repo.read_commit(oid).message.splitlines()[0]
        except (MfgitError, IndexError):
            msg = ""  # a damaged or empty commit still lists its branch
        out.append({"name": name, "ref": ref, "commit": oid, "current": (not remote and name == current),
                    "subject": msg})
    return out


def create_branch(repo: "BaseRepository", name: str, start: str | None = None, *, force: bool = False) -> str:
    check_branch_name(name)
    oid = repo.resolve(start or "HEAD")
    ref = HEADS + name
    if not force and repo.refs.read(ref) is not None:
        raise RefExists(name)
    repo.refs.update(ref, oid, ANY if force else None, who=repo.who(), message=f"branch: created from {start or 'HEAD'}")
    return oid


def delete_branch(repo: "BaseRepository", name: str, *, force: bool = False) -> str:
    ref = HEADS + name
    oid = repo.refs.read(ref)
    if oid is None:
        raise RefNotFound(name)
    if name == repo.head_branch():
        raise BranchInUse(name)
    if not force:
        head = repo.head()
        if head is None or not is_ancestor(repo, oid, head):
            raise NotFullyMerged(name)
    repo.refs.update(ref, None, oid, who=repo.who(), message="branch: deleted")
    return oid


def switch(repo: "BaseRepository", name: str, *, create: bool = False, orphan: bool = False,
           start: str | None = None) -> None:
    check_branch_name(name)
    ref = HEADS + name
    if orphan:
        if repo.refs.read(ref) is not None:
            raise RefExists(name)
    elif create:
        create_branch(repo, name, start)
    elif repo.refs.read(ref) is None:
        raise RefNotFound(name)
    repo.refs.set_symbolic("HEAD", ref, who=repo.who(), message=f"switch: to {name}")


def tag(repo: "BaseRepository", name: str, rev: str = "HEAD", *, message: str | None = None, force: bool = False,
        sign: "Signer | None" = None) -> str:
    check_branch_name(name)
    cid = repo.resolve(rev)
    ref = TAGS + name
    if repo.refs.read(ref) is not None and not force:
        raise RefExists(f"tag {name}")
    value = cid
    if message is not None or sign is not None:
        t = Tag(name=name, target=cid, tagger=repo.identity(), timestamp=utc_now(), message=message or "")
        if sign is not None:
            t = sign(t)
        value = repo.store.put("tag", t.encode())
    repo.refs.update(ref, value, ANY if force else None, who=repo.who(), message=f"tag: {name}")
    return value


def tags(repo: "BaseRepository") -> list[dict[str, Any]]:
    return [{"name": ref[len(TAGS):], "ref": ref, "object": value, "commit": repo.peel(value, ref)}
            for ref, value in repo.refs.items(TAGS).items()]


def decorations(repo: "BaseRepository") -> dict[str, list[str]]:
    """commit id → names pointing at it (HEAD -> branch, tags, remote branches), as log shows them."""
    out: dict[str, list[str]] = {}
    head = repo.head()
    head_branch = repo.head_branch()
    for ref, oid in repo.refs.items("refs/").items():
        if ref.startswith(HEADS):
            name = ref[len(HEADS):]
            label = f"HEAD -> {name}" if name == head_branch else name
        elif ref.startswith(TAGS):
            try:
                oid = repo.resolve(ref)
            except MfgitError:
                continue
            label = f"tag: {ref[len(TAGS):]}"
        elif ref.startswith(REMOTES):
            label = ref[len(REMOTES):]
        else:
            continue
        out.setdefault(oid, []).append(label)
    if head and head_branch is None:
        out.setdefault(head, []).insert(0, "HEAD")
    for labels in out.values():
        labels.sort(key=lambda s: (not s.startswith("HEAD"), s.startswith("tag:"), s))
    return out
