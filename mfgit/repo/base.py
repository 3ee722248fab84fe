"""The core repository: an object store and a ref container, and reading them.

Assembled from a store and refs passed in (dulwich's ``BaseRepo(object_store,
refs)``); `BaseRepository.init` / `open` assemble the on-disk ones. It reads
and resolves objects and revisions, knows who is committing, and writes a
commit object and its ref (`write_commit`, the one place that does both).
Everything else of the core — history, branches, status, the commit and
checkout pipelines, fsck/gc, notes storage — is a module of `mfgit.repo`
taking a repository; the verbs users call are on `mfgit.api.Repository`,
a subclass of this one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mfgit.errors import (
    AmbiguousRevision,
    BadRef,
    ConfigError,
    CorruptObject,
    EmptyBranch,
    MfgitError,
    NotARepository,
    ObjectNotFound,
    RepositoryExists,
    UnknownRevision,
    UnsupportedRepositoryFormat,
    WrongObjectType,
)
from mfgit.objects.model import Adapter, Commit, TensorHeader, decode_object, decode_tensor, is_object_id
from mfgit.objects.timestamp import utc_now
from mfgit.refs import ANY, HEADS, REMOTES, SYMREF, TAGS, DiskRefs, RefStore, check_branch_name, check_ref_name
from mfgit.repo.config import FORMAT_VERSION, OBJECT_FORMAT, READABLE_VERSIONS, Config, upgrade_format
from mfgit.repo.crash import crashpoint
from mfgit.repo.revisions import is_hex_prefix, split_revision
from mfgit.store import DiskStore, ObjectStore
from mfgit.store.fileio import atomic_write

GITDIR = ".mfgit"
DEFAULT_BRANCH = "main"

Signer = Callable[[Any], Any]  # a Commit or Tag → the same, signed


@dataclass(frozen=True)
class CommitInfo:
    id: str
    commit: Commit

    def to_dict(self) -> dict[str, Any]:
        d = self.commit.to_dict()
        d["id"] = self.id
        return d


class BaseRepository:
    def __init__(self, store: ObjectStore, refs: RefStore, *, gitdir: Path | None = None,
                 worktree: Path | None = None, config: Config | None = None):
        self.store = store
        self.refs = refs
        self.gitdir = gitdir
        self.worktree = worktree
        self.config = config if config is not None else Config(Path(os.devnull))

    # -- creation and discovery ------------------------------------------------

    @classmethod
    def init(cls, path: str | os.PathLike = ".", *, bare: bool = False, site: str | None = None,
             initial_branch: str = DEFAULT_BRANCH):
        root = Path(path).absolute()
        gitdir = root if bare else root / GITDIR
        if (gitdir / "config").exists() or (bare and (gitdir / "HEAD").exists()):
            raise RepositoryExists(str(gitdir))
        if bare and root.exists() and any(root.iterdir()):
            raise RepositoryExists(str(root))
        check_branch_name(initial_branch)
        for sub in ("objects", "refs/heads", "refs/tags", "logs", "tmp"):
            (gitdir / sub).mkdir(parents=True, exist_ok=True)
        cfg = (
            "[core]\n"
            f"objectformat = {OBJECT_FORMAT}\n"
            f"formatversion = {FORMAT_VERSION}\n"
            f"bare = {'true' if bare else 'false'}\n"
        )
        atomic_write(gitdir / "config", cfg.encode())
        atomic_write(gitdir / "HEAD", f"{SYMREF}{HEADS}{initial_branch}\n".encode())
        repo = cls.open(root if not bare else gitdir)
        if site:
            repo.config.set("user.site", site)
        return repo

    @classmethod
    def discover(cls, start: str | os.PathLike = ".") -> tuple[Path, Path | None]:
        """Find (gitdir, worktree) from `start` upwards."""
        p = Path(start).absolute()
        for d in [p, *p.parents]:
            if (d / GITDIR / "config").is_file():
                return d / GITDIR, d
            if (d / "config").is_file() and (d / "objects").is_dir() and (d / "HEAD").is_file():
                return d, None  # a bare repository
        raise NotARepository(str(p))

    @classmethod
    def open(cls, path: str | os.PathLike = "."):
        gitdir, worktree = cls.discover(path)
        config = Config(gitdir / "config")
        fmt = config.repo.get("core.objectformat")
        ver = config.repo.get("core.formatversion")
        if fmt != OBJECT_FORMAT or ver not in READABLE_VERSIONS:
            raise UnsupportedRepositoryFormat(str(gitdir), str(fmt), str(ver))
        upgrade = None if ver == FORMAT_VERSION else (lambda: upgrade_format(config))
        return cls(DiskStore(gitdir / "objects", before_first_write=upgrade), DiskRefs(gitdir), gitdir=gitdir,
                   worktree=worktree, config=config)

    @property
    def is_bare(self) -> bool:
        return self.worktree is None

    def close(self) -> None:
        """Let go of the store's writer lock (a gc waits for writers); the repository can be used again after."""
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- identity ----------------------------------------------------------------

    def identity(self) -> dict[str, str]:
        # As in git, the environment overrides the configuration.
        name = os.environ.get("MFGIT_AUTHOR_NAME") or self.config.get("user.name")
        email = os.environ.get("MFGIT_AUTHOR_EMAIL") or self.config.get("user.email")
        if not name or not email:
            raise ConfigError(
                "user.name" if not name else "user.email",
                "is not set; tell mfgit who you are: mfgit config user.name \"Your Name\" && "
                "mfgit config user.email you@example.org",
            )
        return {"name": name, "email": email}

    def site(self) -> str | None:
        return self.config.get("user.site") or os.environ.get("MFGIT_SITE")

    def who(self) -> str:
        """Who is acting, for the reflog: ``Name <email>``, or ``unknown``."""
        try:
            ident = self.identity()
            return f"{ident['name']} <{ident['email']}>"
        except ConfigError:
            return "unknown"

    # -- objects -------------------------------------------------------------------

    def read_object(self, oid: str, *, verify: bool = False) -> Any:
        kind, payload = self.store.get(oid, verify=verify)
        if kind == "tensor":
            return decode_tensor(oid, payload)
        return decode_object(oid, kind, payload)

    def read_commit(self, oid: str) -> Commit:
        obj = self.read_object(oid)
        if not isinstance(obj, Commit):
            raise WrongObjectType(oid, "commit", _kind_name(obj))
        return obj

    def read_adapter(self, oid: str) -> Adapter:
        obj = self.read_object(oid)
        if not isinstance(obj, Adapter):
            raise WrongObjectType(oid, "adapter", _kind_name(obj))
        return obj

    def read_tensor(self, oid: str, *, verify: bool = False,
                    out: bytearray | None = None) -> tuple[TensorHeader, memoryview]:
        """A tensor object's header and raw bytes (decoded into `out` when given, see decode_stored)."""
        kind, payload = self.store.get(oid, verify=verify, out=out)
        if kind != "tensor":
            raise WrongObjectType(oid, "tensor", kind)
        return decode_tensor(oid, payload)

    def load_tensor(self, oid: str, *, device: str = "cpu"):
        """A tensor object as a torch.Tensor (a copy; objects stay immutable)."""
        from mfgit.repo.tensors import torch_from_bytes

        header, raw = self.read_tensor(oid)
        return torch_from_bytes(header, raw).to(device)

    def put_commit(self, commit: Commit) -> str:
        return self.store.put("commit", commit.encode())

    def put_adapter(self, adapter: Adapter) -> str:
        return self.store.put("adapter", adapter.encode())

    # -- HEAD and revisions --------------------------------------------------------

    def head_branch(self) -> str | None:
        """Short name of the checked-out branch, or None when HEAD is detached."""
        target = self.refs.symbolic_target("HEAD")
        if target and target.startswith(HEADS):
            return target[len(HEADS):]
        return None

    def head(self) -> str | None:
        """HEAD's commit id, None on a branch without commits; BadRef if HEAD or its branch is damaged."""
        return self.ref_commit(self.refs.symbolic_target("HEAD") or "HEAD", self.refs.resolve("HEAD"))

    def commit_target(self) -> tuple[str | None, str | None]:
        """(ref a new commit moves, its current value): the checked-out branch, or (None, HEAD) when detached.

        The value is the parent of the new commit, so it must be an existing
        commit: a ref holding anything else is a BadRef, never a parent.
        """
        target = self.refs.symbolic_target("HEAD")
        if target is None:
            return None, self.head()
        return target, self.ref_commit(target, self.refs.resolve(target))

    def ref_commit(self, name: str, value: str | None, *, tags: bool = False) -> str | None:
        """`value`, what ref `name` resolves to, if it is the id of an existing commit (or tag, with `tags`).

        Raises BadRef naming the ref otherwise; None stays None (no commits yet).
        """
        if value is None:
            return None
        try:
            kind, _ = self.store.get(value)
        except ObjectNotFound:
            raise BadRef(name, f"points to missing object {value}", self.refs.location(name)) from None
        if kind == "commit" or (tags and kind == "tag"):
            return value
        raise BadRef(name, f"points to {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not a commit",
                     self.refs.location(name))

    def resolve(self, rev: str) -> str:
        """Resolve a revision to a commit id (tags are peeled); see mfgit.repo.revisions for the syntax."""
        base, steps = split_revision(rev)
        oid = self.peel(self._resolve_base(base), rev)
        for step in steps:
            if step.op == "~":
                for _ in range(step.n):
                    parents = self.read_commit(oid).parents
                    if not parents:
                        raise UnknownRevision(rev, f"{oid[:12]} has no parent")
                    oid = parents[0]
            elif step.n:
                parents = self.read_commit(oid).parents
                if len(parents) < step.n:
                    raise UnknownRevision(rev, f"{oid[:12]} has {len(parents)} parent(s)")
                oid = parents[step.n - 1]
        return oid

    def peel(self, oid: str, rev: str) -> str:
        """Follow tags from `oid` to the commit they name."""
        for _ in range(10):
            try:
                kind, payload = self.store.get(oid)
            except ObjectNotFound:
                raise UnknownRevision(rev, f"object {oid[:12]} is missing") from None
            if kind == "commit":
                return oid
            if kind == "tag":
                oid = decode_object(oid, kind, payload).target
                continue
            raise UnknownRevision(rev, f"{oid[:12]} is a {kind}, not a commit")
        raise UnknownRevision(rev, "tag chain too long")

    def _resolve_base(self, base: str) -> str:
        if base in ("HEAD", "@"):
            oid = self.head()
            if oid is None:
                raise EmptyBranch(self.head_branch() or "HEAD")
            return oid
        if is_object_id(base) and self.store.has(base):
            return base
        candidates = [base] if base.startswith("refs/") else [base, HEADS + base, TAGS + base, REMOTES + base]
        for ref in candidates:
            try:
                check_ref_name(ref)
            except MfgitError:
                continue
            value = self.refs.resolve(ref)
            if value is not None:
                return self.ref_commit(ref, value, tags=True)
        if is_hex_prefix(base):
            commits = []
            for oid in self.store.ids_with_prefix(base):
                try:
                    kind, _ = self.store.get(oid)
                except (ObjectNotFound, CorruptObject):
                    continue
                if kind in ("commit", "tag"):
                    commits.append(oid)
            if len(commits) == 1:
                return commits[0]
            if len(commits) > 1:
                raise AmbiguousRevision(base, commits)
        raise UnknownRevision(base)

    # -- writing a commit ----------------------------------------------------------

    def write_commit(self, adapter_id: str, parents: list[str], message: str, provenance: dict,
                     branch_ref: str | None, expected: str | None, ident: dict | None = None,
                     timestamp: str | None = None, sign: Signer | None = None,
                     attachments: tuple[dict[str, Any], ...] = (),
                     mixture: dict | None = None) -> CommitInfo:
        """Store a commit object, then move `branch_ref` (HEAD when None) from `expected` to it.

        Objects before refs (invariant 4): the caller has stored everything
        the adapter names, and the public `attachments` (entries as
        mfgit.repo.attachments.store returns them); the commit object is durable before the ref moves,
        and the ref moves by compare-and-swap (RefConflict if it moved meanwhile).
        """
        commit = Commit(
            adapter=adapter_id,
            parents=tuple(parents),
            author=ident or self.identity(),
            site=self.site(),
            timestamp=timestamp or utc_now(),
            message=message,
            provenance=provenance,
            # --- attachments ---
            attachments=tuple(attachments),
            # --- end attachments ---
            mixture=mixture,  # --- mixture: an output-space composite (mfgit.api.mixture) ---
        )
        if sign is not None:
            commit = sign(commit)
        cid = self.put_commit(commit)
        kind = "merge" if provenance.get("kind") == "merge" else "commit"
        # One name per operation (mfgit.repo.crash.POINTS): a merge's commit
        # has its own point here, so the merge's test is the one that drives it.
        if kind == "merge":
            crashpoint("merge-before-ref")
        else:
            crashpoint("after-commit-object")
        summary = message.splitlines()[0] if message else ""
        if mixture is not None:  # --- mixture: named so in the reflog ---
            kind = "mixture"
        if branch_ref is None:
            self.refs.update("HEAD", cid, ANY, who=self.who(), message=f"{kind}: {summary}")
        else:
            self.refs.update(branch_ref, cid, expected, who=self.who(),
                             message=f"{kind}{' (initial)' if expected is None else ''}: {summary}")
        crashpoint("after-ref")
        return CommitInfo(cid, commit)


def _kind_name(obj: Any) -> str:
    return "tensor" if isinstance(obj, tuple) else type(obj).__name__.lower()
