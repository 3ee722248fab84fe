"""Repository: an object store and a ref container, and the verbs on them.

The store and refs are passed to the constructor (`Repository(store, refs,
...)`); `Repository.init` / `Repository.open` assemble the on-disk ones.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mfgit.api.config import FORMAT_VERSION, OBJECT_FORMAT, Config
from mfgit.api.provenance import code_revision, library_versions, parse_meta
from mfgit.api.revisions import is_hex_prefix, split_revision
from mfgit.api.statcache import StatCache, quick_digest
from mfgit.errors import (
    AmbiguousRevision,
    BranchInUse,
    ConfigError,
    CorruptObject,
    EmptyBranch,
    InvalidAdapter,
    MalformedObject,
    NotARepository,
    NothingToCommit,
    NotFullyMerged,
    ObjectNotFound,
    RefExists,
    RefNotFound,
    RepositoryExists,
    UnknownRevision,
    UnsupportedRepositoryFormat,
    WrongObjectType,
)
from mfgit.formats import peft as peftfmt
from mfgit.formats import safetensors as st
from mfgit.objects.model import Adapter, Commit, Tag, TensorHeader, decode_object, is_object_id, tensor_id
from mfgit.refs import ANY, DiskRefs, RefStore, check_branch_name, check_ref_name
from mfgit.refs.refstore import SYMREF, utc_now
from mfgit.store import DiskStore, ObjectStore
from mfgit.store.fileio import atomic_write, fsync_dir, start_writeback

GITDIR = ".mfgit"
HEADS = "refs/heads/"
TAGS = "refs/tags/"
REMOTES = "refs/remotes/"
DEFAULT_BRANCH = "main"


def _crashpoint(name: str) -> None:
    """Fault injection for the crash-safety tests: SIGKILL ourselves at `name`.

    Enabled only by the MFGIT_CRASH_AT environment variable; the tests kill
    a real `mfgit commit` process at each named point and then check that
    the repository is sound.
    """
    if os.environ.get("MFGIT_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class CommitInfo:
    id: str
    commit: Commit

    def to_dict(self) -> dict[str, Any]:
        d = self.commit.to_dict()
        d["id"] = self.id
        return d


class Repository:
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
             initial_branch: str = DEFAULT_BRANCH) -> "Repository":
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
    def open(cls, path: str | os.PathLike = ".") -> "Repository":
        gitdir, worktree = cls.discover(path)
        config = Config(gitdir / "config")
        fmt = config.repo.get("core.objectformat")
        ver = config.repo.get("core.formatversion")
        if fmt != OBJECT_FORMAT or ver != FORMAT_VERSION:
            raise UnsupportedRepositoryFormat(str(gitdir), str(fmt), str(ver))
        return cls(DiskStore(gitdir / "objects"), DiskRefs(gitdir), gitdir=gitdir, worktree=worktree, config=config)

    @property
    def is_bare(self) -> bool:
        return self.worktree is None

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

    def _who(self) -> str:
        try:
            ident = self.identity()
            return f"{ident['name']} <{ident['email']}>"
        except ConfigError:
            return "unknown"

    # -- objects -------------------------------------------------------------------

    def read_object(self, oid: str, *, verify: bool = False) -> Any:
        kind, payload = self.store.get(oid, verify=verify)
        if kind == "tensor":
            header, raw = _split_tensor(oid, payload)
            return header, raw
        return decode_object(oid, kind, payload)

    def read_commit(self, oid: str) -> Commit:
        obj = self.read_object(oid)
        if not isinstance(obj, Commit):
            raise WrongObjectType(oid, "commit", type(obj).__name__.lower())
        return obj

    def read_adapter(self, oid: str) -> Adapter:
        obj = self.read_object(oid)
        if not isinstance(obj, Adapter):
            raise WrongObjectType(oid, "adapter", type(obj).__name__.lower())
        return obj

    def read_tensor(self, oid: str, *, verify: bool = False,
                    out: bytearray | None = None) -> tuple[TensorHeader, memoryview]:
        """A tensor object's header and raw bytes (decoded into `out` when given, see decode_stored)."""
        kind, payload = self.store.get(oid, verify=verify, out=out)
        if kind != "tensor":
            raise WrongObjectType(oid, "tensor", kind)
        return _split_tensor(oid, payload)

    def load_tensor(self, oid: str, *, device: str = "cpu"):
        """A tensor object as a torch.Tensor (a copy; objects stay immutable)."""
        header, raw = self.read_tensor(oid)
        return _torch_from_bytes(header, raw).to(device)

    def put_commit(self, commit: Commit) -> str:
        return self.store.put("commit", commit.encode())

    def put_adapter(self, adapter: Adapter) -> str:
        return self.store.put("adapter", adapter.encode())

    # -- revisions -------------------------------------------------------------------

    def head_branch(self) -> str | None:
        """Short name of the checked-out branch, or None when HEAD is detached."""
        target = self.refs.symbolic_target("HEAD")
        if target and target.startswith(HEADS):
            return target[len(HEADS):]
        return None

    def head(self) -> str | None:
        return self.refs.resolve("HEAD")

    def _peel(self, oid: str, rev: str) -> str:
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
        if base == "HEAD" or base == "@":
            oid = self.head()
            if oid is None:
                branch = self.head_branch() or "HEAD"
                raise EmptyBranch(branch)
            return oid
        if is_object_id(base) and self.store.has(base):
            return base
        candidates = [base, HEADS + base, TAGS + base, REMOTES + base]
        if base.startswith("refs/"):
            candidates = [base]
        for ref in candidates:
            try:
                check_ref_name(ref)
            except Exception:
                continue
            value = self.refs.resolve(ref)
            if value is not None:
                return value
        if is_hex_prefix(base):
            matches = [oid for oid in self._ids_with_prefix(base)]
            commits = []
            for oid in matches:
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

    def _ids_with_prefix(self, prefix: str) -> Iterator[str]:
        if isinstance(self.store, DiskStore):
            d = self.store.root / prefix[:2]
            if not d.is_dir():
                return
            for name in sorted(os.listdir(d)):
                if (prefix[:2] + name).startswith(prefix) and is_object_id(prefix[:2] + name):
                    yield prefix[:2] + name
        else:
            for oid in self.store.iter_ids():
                if oid.startswith(prefix):
                    yield oid

    def resolve(self, rev: str) -> str:
        """Resolve a revision to a commit id (tags are peeled)."""
        base, steps = split_revision(rev)
        oid = self._peel(self._resolve_base(base), rev)
        for step in steps:
            if step.op == "~":
                for _ in range(step.n):
                    parents = self.read_commit(oid).parents
                    if not parents:
                        raise UnknownRevision(rev, f"{oid[:12]} has no parent")
                    oid = parents[0]
            else:
                if step.n == 0:
                    continue
                parents = self.read_commit(oid).parents
                if len(parents) < step.n:
                    raise UnknownRevision(rev, f"{oid[:12]} has {len(parents)} parent(s)")
                oid = parents[step.n - 1]
        return oid

    def short_id(self, oid: str, length: int = 10) -> str:
        return oid[:length]

    # -- commit ----------------------------------------------------------------------

    def commit(self, source: Any, message: str, *, meta: list[str] | dict | None = None,
               code: str | os.PathLike | None = None, allow_pickle: bool = False,
               allow_empty: bool = False, author: dict[str, str] | None = None,
               timestamp: str | None = None, sign=None) -> CommitInfo:
        """Commit a PEFT adapter directory (or a PeftModel) on the current branch.

        Raises InvalidAdapter / PickleRefused / SafetensorsError for bad input,
        NothingToCommit if the adapter equals HEAD's (unless allow_empty),
        RefConflict if the branch moved meanwhile. The source is only read.
        """
        if not isinstance(source, (str, os.PathLike)):
            return self._commit_model(source, message, meta=meta, code=code, allow_empty=allow_empty,
                                      author=author, timestamp=timestamp, sign=sign)
        path = Path(source)
        ident = author or self.identity()
        adir = peftfmt.inspect_adapter_dir(path, allow_pickle=allow_pickle)
        branch_ref, parent = self._commit_target()
        # Reading the code revision (GitPython: ~50 ms, mostly its import)
        # overlaps the tensor import when there is one: the workers spend
        # their time in hashing, compression and I/O, outside the GIL.
        code_job = _Job(lambda: code_revision(code, required=True) if code else code_revision(path))
        try:
            adapter_id = self._import_adapter(adir, before_import=code_job.start)
            if parent is not None and not allow_empty:
                if self.read_commit(parent).adapter == adapter_id:
                    raise NothingToCommit(adapter_id)
        except BaseException:
            code_job.wait()
            raise
        code_info = code_job.result()
        provenance = {
            "kind": "import",
            "source": {
                "name": path.resolve().name,
                "format": "pickle" if adir.pickled else "safetensors",
                "files": sorted([peftfmt.CONFIG_NAME, adir.weights.name] + [f.name for f in adir.extra_files]),
            },
            "base_model": _base_model(adir.config),
            "code": code_info,
            "meta": parse_meta(meta),
            "tool": library_versions(),
        }
        return self._write_commit(adapter_id, [parent] if parent else [], message, provenance,
                                  branch_ref, parent, ident, timestamp, sign=sign)

    def _commit_model(self, model, message, **kw) -> CommitInfo:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="mfgit-peft-") as tmp:
            model.save_pretrained(tmp)
            return self.commit(tmp, message, **kw)

    def _commit_target(self) -> tuple[str | None, str | None]:
        target = self.refs.symbolic_target("HEAD")
        if target is None:
            return None, self.head()  # detached HEAD
        return target, self.refs.resolve(target)

    def _write_commit(self, adapter_id: str, parents: list[str], message: str, provenance: dict,
                      branch_ref: str | None, expected: str | None, ident: dict | None = None,
                      timestamp: str | None = None, sign=None) -> CommitInfo:
        commit = Commit(
            adapter=adapter_id,
            parents=tuple(parents),
            author=ident or self.identity(),
            site=self.site(),
            timestamp=timestamp or utc_now(),
            message=message,
            provenance=provenance,
        )
        if sign is not None:
            commit = sign(commit)
        cid = self.put_commit(commit)
        _crashpoint("after-commit-object")
        # Objects before refs (invariant 4): the commit and everything it
        # names are durable before the branch may point at it.
        summary = message.splitlines()[0] if message else ""
        kind = "merge" if provenance.get("kind") == "merge" else "commit"
        if branch_ref is None:
            self.refs.update("HEAD", cid, ANY, who=self._who(), message=f"{kind}: {summary}")
        else:
            self.refs.update(branch_ref, cid, expected, who=self._who(),
                             message=f"{kind}{' (initial)' if expected is None else ''}: {summary}")
        _crashpoint("after-ref")
        return CommitInfo(cid, commit)

    def _import_adapter(self, adir: peftfmt.AdapterDir, *, before_import=None) -> str:
        """Store the adapter's tensors and manifest; return the manifest id.

        `before_import` is called when the stat cache cannot answer and the
        tensors are about to be read.
        """
        cache = StatCache(self.gitdir / "statcache.json") if self.gitdir else None
        files = [adir.path / peftfmt.CONFIG_NAME, adir.weights, *adir.extra_files]
        digest_fn = lambda: quick_digest(files[0], adir.weights)  # noqa: E731
        if cache is not None and not adir.pickled:
            cached = cache.lookup(adir.path, files, digest_fn)
            if cached and self.store.has(cached) and self._adapter_complete(cached):
                return cached
        if before_import is not None:
            before_import()
        if adir.pickled:
            adapter = self._import_pickle(adir)
        else:
            adapter = self._import_safetensors(adir)
        aid = self.put_adapter(adapter)
        _crashpoint("after-adapter-object")
        if cache is not None and not adir.pickled:
            cache.record(adir.path, files, digest_fn(), aid)
        return aid

    def _adapter_complete(self, aid: str) -> bool:
        try:
            adapter = self.read_adapter(aid)
        except Exception:
            return False
        return all(self.store.has(t) for t in adapter.referenced_ids())

    def _import_safetensors(self, adir: peftfmt.AdapterDir) -> Adapter:
        where = str(adir.weights)
        self.store.begin_batch()
        try:
            # Read each tensor into memory with pread rather than mapping the
            # user's file: bytes that change or vanish while we work (a
            # checkpoint rewritten in place, a truncated file) can then
            # never make the stored bytes differ from the hashed ones, nor
            # kill the process with SIGBUS — a short read is a clear error.
            header = st.read_header(adir.weights)
            infos = list(header.tensors.values())
            fd = os.open(adir.weights, os.O_RDONLY)
            try:
                local = threading.local()

                def one(info: st.TensorInfo) -> tuple[str, str]:
                    th = TensorHeader(info.dtype, tuple(info.shape))
                    # One read buffer per thread, reused: a fresh one per
                    # tensor costs a page fault per 4 KiB and an munmap.
                    buf = getattr(local, "buf", None)
                    if buf is None or len(buf) < info.nbytes:
                        buf = local.buf = bytearray(max(info.nbytes, 1 << 20))
                    raw = memoryview(buf)[: info.nbytes]
                    _pread_into(fd, raw, header.data_offset + info.start, where)
                    tid = tensor_id(th, raw)
                    self.store.put_tensor(th, raw, tid)
                    _crashpoint("during-tensors")
                    return info.name, tid

                # hashlib, zstd, numpy and pread release the GIL on large
                # buffers: two threads keep both cores busy on a big adapter.
                ids = dict(_parallel_map(one, infos))
            finally:
                os.close(fd)
            tensors = {
                i.name: {"id": ids[i.name], "dtype": i.dtype, "shape": list(i.shape)} for i in infos
            }
            metadata = header.metadata
            files = self._store_extra_files(adir)
            _crashpoint("after-tensors")
        except BaseException:
            if isinstance(self.store, DiskStore):
                self.store.abort_batch()
            raise
        self.store.end_batch()
        modules = peftfmt.lora_modules({k: (v["dtype"], tuple(v["shape"])) for k, v in tensors.items()}, where)
        return Adapter(config=adir.config, base_model=_base_model(adir.config), tensors=dict(sorted(tensors.items())),
                       modules=modules, metadata=metadata, files=files)

    def _import_pickle(self, adir: peftfmt.AdapterDir) -> Adapter:
        state = peftfmt.load_pickle_tensors(adir.weights)
        tensors = {}
        for name, t in sorted(state.items()):
            th, raw = _torch_to_bytes(t)
            tid = tensor_id(th, raw)
            self.store.put_tensor(th, raw, tid)
            tensors[name] = {"id": tid, "dtype": th.dtype, "shape": list(th.shape)}
        files = self._store_extra_files(adir)
        modules = peftfmt.lora_modules({k: (v["dtype"], tuple(v["shape"])) for k, v in tensors.items()}, str(adir.weights))
        return Adapter(config=adir.config, base_model=_base_model(adir.config), tensors=tensors, modules=modules,
                       metadata={"format": "pt"}, files=files)

    def _store_extra_files(self, adir: peftfmt.AdapterDir) -> dict[str, str]:
        files = {}
        for f in adir.extra_files:
            files[f.name] = self.store.put("blob", f.read_bytes())
        return files

    def store_adapter_tensors(self, config: dict, tensors: dict[str, Any], metadata: dict | None = None,
                              base_model: dict | None = None) -> str:
        """Store torch tensors as a new adapter (used by merge); returns its id."""
        self.store.begin_batch()
        entries = {}
        try:
            for name, t in sorted(tensors.items()):
                th, raw = _torch_to_bytes(t)
                tid = tensor_id(th, raw)
                self.store.put_tensor(th, raw, tid)
                entries[name] = {"id": tid, "dtype": th.dtype, "shape": list(th.shape)}
        except BaseException:
            if isinstance(self.store, DiskStore):
                self.store.abort_batch()
            raise
        self.store.end_batch()
        modules = peftfmt.lora_modules({k: (v["dtype"], tuple(v["shape"])) for k, v in entries.items()}, "merge output")
        adapter = Adapter(config=config, base_model=base_model or _base_model(config), tensors=entries,
                          modules=modules, metadata=metadata or {"format": "pt"}, files={})
        return self.put_adapter(adapter)

    # -- checkout --------------------------------------------------------------------

    def checkout(self, rev: str, to: str | os.PathLike, *, force: bool = False) -> Path:
        """Write the adapter of `rev` as a PEFT adapter directory at `to`.

        Every tensor is checked against its digest as it is read; on any
        error the partial output is removed and nothing is left at the
        final names.
        """
        cid = self.resolve(rev)
        adapter = self.read_adapter(self.read_commit(cid).adapter)
        return self.write_adapter_dir(adapter, to, force=force)

    def write_adapter_dir(self, adapter: Adapter, to: str | os.PathLike, *, force: bool = False) -> Path:
        import shutil
        import tempfile

        for name in adapter.files:
            peftfmt.safe_join(Path(to), name)  # refuse before writing anything
        created = not os.path.lexists(to)
        out = peftfmt.prepare_output_dir(to, force=force)
        staging = Path(tempfile.mkdtemp(prefix=".mfgit-checkout-", dir=out))
        try:
            names = sorted(adapter.tensors)
            specs = [(n, adapter.tensors[n]["dtype"], tuple(adapter.tensors[n]["shape"])) for n in names]

            local = threading.local()

            def fetch(name: str) -> memoryview:
                t = adapter.tensors[name]
                # Decoded into this thread's buffer, reused tensor after tensor.
                buf = getattr(local, "buf", None)
                if buf is None:
                    buf = local.buf = bytearray()
                header, raw = self.read_tensor(t["id"], out=buf)
                if header.dtype != t["dtype"] or list(header.shape) != list(t["shape"]):
                    raise MalformedObject(t["id"], f"manifest says {t['dtype']}{t['shape']}, object is {header.dtype}{list(header.shape)}")
                return raw

            weights_tmp = staging / peftfmt.WEIGHTS_NAME
            fd = os.open(weights_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask, like open()
            try:
                _write_safetensors_parallel(fd, specs, fetch, adapter.metadata)
                os.fsync(fd)
            finally:
                os.close(fd)
            (staging / peftfmt.CONFIG_NAME).write_bytes(peftfmt.config_bytes(adapter.config))
            for name, bid in adapter.files.items():
                blob = self.read_object(bid)
                (staging / name).write_bytes(blob.data)
            for entry in sorted(staging.iterdir()):
                os.replace(entry, peftfmt.safe_join(out, entry.name))
            fsync_dir(out)
        except BaseException:
            if created:  # leave no trace of a failed checkout
                shutil.rmtree(out, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return out

    def load_adapter(self, base_model, rev: str = "HEAD", *, adapter_name: str = "default", **kwargs):
        """Load `rev` onto `base_model` as a peft.PeftModel."""
        import tempfile
        from peft import PeftModel

        with tempfile.TemporaryDirectory(prefix="mfgit-load-") as tmp:
            path = self.checkout(rev, Path(tmp) / "adapter")
            return PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name, **kwargs)

    # -- history ---------------------------------------------------------------------

    def walk(self, starts: list[str], *, exclude: list[str] | None = None, first_parent: bool = False) -> Iterator[CommitInfo]:
        """Commits reachable from `starts` and not from `exclude`, newest first."""
        import heapq

        hidden: set[str] = set()
        if exclude:
            stack = list(exclude)
            while stack:
                oid = stack.pop()
                if oid in hidden:
                    continue
                hidden.add(oid)
                stack.extend(self.read_commit(oid).parents)
        seen: set[str] = set()
        heap: list[tuple[str, int, str]] = []
        counter = 0
        for s in starts:
            if s not in seen and s not in hidden:
                seen.add(s)
                c = self.read_commit(s)
                heap.append((_neg_time(c.timestamp), counter, s))
                counter += 1
        heapq.heapify(heap)
        while heap:
            _, _, oid = heapq.heappop(heap)
            c = self.read_commit(oid)
            yield CommitInfo(oid, c)
            parents = c.parents[:1] if first_parent else c.parents
            for p in parents:
                if p not in seen and p not in hidden:
                    seen.add(p)
                    pc = self.read_commit(p)
                    counter += 1
                    heapq.heappush(heap, (_neg_time(pc.timestamp), counter, p))

    def log(self, rev: str = "HEAD", *, n: int | None = None, first_parent: bool = False) -> list[CommitInfo]:
        """History from `rev` (or ``A..B``: reachable from B but not A), newest first."""
        if ".." in rev and "..." not in rev:
            a, b = rev.split("..", 1)
            starts, exclude = [self.resolve(b or "HEAD")], [self.resolve(a or "HEAD")]
        else:
            starts, exclude = [self.resolve(rev)], None
        out = []
        for info in self.walk(starts, exclude=exclude, first_parent=first_parent):
            out.append(info)
            if n is not None and len(out) >= n:
                break
        return out

    def show(self, rev: str = "HEAD") -> dict[str, Any]:
        cid = self.resolve(rev)
        commit = self.read_commit(cid)
        adapter = self.read_adapter(commit.adapter)
        return {"id": cid, "commit": commit.to_dict(), "adapter": adapter_summary(commit.adapter, adapter)}

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        stack, seen = [descendant], set()
        while stack:
            oid = stack.pop()
            if oid == ancestor:
                return True
            if oid in seen:
                continue
            seen.add(oid)
            stack.extend(self.read_commit(oid).parents)
        return False

    # -- branches and tags ---------------------------------------------------------------

    def branches(self, *, remote: bool = False) -> list[dict[str, Any]]:
        prefix = REMOTES if remote else HEADS
        current = self.head_branch()
        out = []
        for ref, oid in self.refs.items(prefix).items():
            name = ref[len(prefix):]
            try:
                msg = self.read_commit(oid).message.splitlines()[0]
            except Exception:
                msg = ""
            out.append({"name": name, "ref": ref, "commit": oid, "current": (not remote and name == current),
                        "subject": msg})
        return out

    def create_branch(self, name: str, start: str | None = None, *, force: bool = False) -> str:
        check_branch_name(name)
        oid = self.resolve(start or "HEAD")
        ref = HEADS + name
        expected = ANY if force else None
        if not force and self.refs.read(ref) is not None:
            raise RefExists(name)
        self.refs.update(ref, oid, expected, who=self._who(), message=f"branch: created from {start or 'HEAD'}")
        return oid

    def delete_branch(self, name: str, *, force: bool = False) -> str:
        ref = HEADS + name
        oid = self.refs.read(ref)
        if oid is None:
            raise RefNotFound(name)
        if name == self.head_branch():
            raise BranchInUse(name)
        if not force:
            head = self.head()
            merged = head is not None and self.is_ancestor(oid, head)
            if not merged:
                raise NotFullyMerged(name)
        self.refs.update(ref, None, oid, who=self._who(), message="branch: deleted")
        return oid

    def switch(self, name: str, *, create: bool = False, orphan: bool = False, start: str | None = None) -> None:
        check_branch_name(name)
        ref = HEADS + name
        if orphan:
            if self.refs.read(ref) is not None:
                raise RefExists(name)
        elif create:
            self.create_branch(name, start)
        elif self.refs.read(ref) is None:
            raise RefNotFound(name)
        self.refs.set_symbolic("HEAD", ref, who=self._who(), message=f"switch: to {name}")

    def tag(self, name: str, rev: str = "HEAD", *, message: str | None = None, force: bool = False,
            sign=None) -> str:
        check_branch_name(name)
        cid = self.resolve(rev)
        ref = TAGS + name
        if self.refs.read(ref) is not None and not force:
            raise RefExists(f"tag {name}")
        value = cid
        if message is not None or sign is not None:
            t = Tag(name=name, target=cid, tagger=self.identity(), timestamp=utc_now(), message=message or "")
            if sign is not None:
                t = sign(t)
            value = self.store.put("tag", t.encode())
        self.refs.update(ref, value, ANY if force else None, who=self._who(), message=f"tag: {name}")
        return value

    def tags(self) -> list[dict[str, Any]]:
        out = []
        for ref, value in self.refs.items(TAGS).items():
            out.append({"name": ref[len(TAGS):], "ref": ref, "object": value, "commit": self._peel(value, ref)})
        return out

    # -- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        head = self.head()
        branch = self.head_branch()
        out: dict[str, Any] = {
            "branch": branch,
            "detached": branch is None,
            "head": head,
            "bare": self.is_bare,
            "site": self.site(),
            "adapter": None,
            "sources": [],
        }
        head_adapter = None
        if head:
            c = self.read_commit(head)
            head_adapter = c.adapter
            out["adapter"] = adapter_summary(c.adapter, self.read_adapter(c.adapter))
            out["subject"] = c.message.splitlines()[0] if c.message else ""
        if self.gitdir:
            cache = StatCache(self.gitdir / "statcache.json")
            for path, entry in sorted(cache.sources().items()):
                p = Path(path)
                state = "missing"
                if p.is_dir():
                    try:
                        adir = peftfmt.inspect_adapter_dir(p, allow_pickle=True)
                        files = [p / peftfmt.CONFIG_NAME, adir.weights, *adir.extra_files]
                        same = cache.lookup(p, files, lambda: quick_digest(files[0], adir.weights)) == entry["adapter"]
                        if same:
                            state = "unchanged" if entry["adapter"] == head_adapter else "committed elsewhere"
                        else:
                            state = "modified"
                    except Exception:
                        state = "modified"
                out["sources"].append({"path": path, "adapter": entry["adapter"], "state": state})
        return out

    # -- merge -------------------------------------------------------------------------------

    def merge(self, revs: list[str], **kwargs):
        """Merge revisions in weight space and commit; see mfgit.api.merging.merge.

        Strategy parameters may be given as keywords or in ``params``:
        ``repo.merge(["sites/a", "sites/b"], strategy="ties", density=0.2, weights=[0.5, 0.5],
        rank=16, seed=7)``.
        """
        import inspect

        from mfgit.api.merging import merge as _merge

        known = set(inspect.signature(_merge).parameters)
        params = dict(kwargs.pop("params", None) or {})
        params.update({k: kwargs.pop(k) for k in list(kwargs) if k not in known})
        return _merge(self, list(revs), params=params, **kwargs)

    def reproduce_merge(self, rev: str, **kwargs) -> dict[str, Any]:
        """Re-run the merge commit `rev` from its recorded recipe and inputs."""
        from mfgit.api.merging import reproduce

        return reproduce(self, self.resolve(rev), **kwargs)

    # -- remotes -------------------------------------------------------------------------------

    def remote_add(self, name: str, url: str, **s3_options) -> None:
        """Add a remote (a path, file:///path or s3://bucket/prefix); S3 options: endpoint, region, profile."""
        from mfgit.api import remotes

        remotes.remote_add(self, name, url, **s3_options)

    def remote_remove(self, name: str) -> None:
        from mfgit.api import remotes

        remotes.remote_remove(self, name)

    def remotes(self) -> list[dict[str, Any]]:
        from mfgit.api import remotes

        return remotes.remotes(self)

    def push(self, remote: str, refspecs: list[str] | None = None, **kwargs) -> dict[str, Any]:
        """Upload missing objects, then move the remote branch by compare-and-swap."""
        from mfgit.api import remotes

        return remotes.push(self, remote, refspecs, **kwargs)

    def fetch(self, remote: str, **kwargs) -> dict[str, Any]:
        """Download what the remote has and we lack; update refs/remotes/<remote>/*."""
        from mfgit.api import remotes

        return remotes.fetch(self, remote, **kwargs)

    def pull(self, remote: str, branch: str | None = None, **kwargs) -> dict[str, Any]:
        from mfgit.api import remotes

        return remotes.pull(self, remote, branch, **kwargs)

    @classmethod
    def clone(cls, url: str, directory: str | os.PathLike, **kwargs) -> "Repository":
        from mfgit.api import remotes

        repo, _report = remotes.clone(url, directory, **kwargs)
        return repo

    # -- audit: diff, lineage, blame, verify, export, signing (mfgit.api.audit) -------------------

    def diff(self, rev_a: str, rev_b: str, *, stat: bool = False) -> dict[str, Any]:
        """Per-module comparison of two commits' adapters (exact, from the factors)."""
        from mfgit.api import audit

        return audit.diff(self, rev_a, rev_b, stat=stat)

    def lineage(self, rev: str = "HEAD") -> dict[str, Any]:
        """The merge DAG from `rev` down to its leaves, with effective weights."""
        from mfgit.api import audit

        return audit.lineage(self, rev)

    def blame(self, rev: str = "HEAD", *, first_parent: bool = True) -> dict[str, Any]:
        """For each module of `rev`, the commit that last changed it."""
        from mfgit.api import audit

        return audit.blame(self, rev, first_parent=first_parent)

    def verify(self, rev: str = "HEAD", **kwargs) -> dict[str, Any]:
        """Integrity, and optionally reproducibility (reproduce=True) and signatures (signatures=True)."""
        from mfgit.api import audit

        return audit.verify(self, rev, **kwargs)

    def export(self, rev: str, outdir: str | os.PathLike, **kwargs) -> dict[str, Any]:
        """PEFT directory of `rev`, with a model card (card=True) and a signed manifest (manifest=True)."""
        from mfgit.api import audit

        return audit.export(self, rev, outdir, **kwargs)

    def signer(self, key: str | os.PathLike | None = None):
        """The sign= callable for commit/merge/tag, from `key` or config signing.key."""
        from mfgit.api import audit

        return audit.signer(self, key)

    # -- notes: metrics measured at the sites, attached to commits (mfgit.api.notes) ----------------------

    def notes_for(self, commit_id: str) -> list[dict[str, Any]]:
        """The notes attached to `commit_id`, each checked (``ok``, ``signature``, ``problem``)."""
        from mfgit.api import notes

        return notes.notes_for(self, commit_id)

    def notes_show(self, rev: str = "HEAD") -> dict[str, Any]:
        from mfgit.api import notes

        return notes.show(self, rev)

    def notes_list(self) -> dict[str, Any]:
        from mfgit.api import notes

        return notes.listing(self)

    def evaluate(self, revs: list[str], *, score: Any, name: str, **kwargs) -> list[dict[str, Any]]:
        """Score `revs` with the user's function on this site's data; attach the values as notes."""
        from mfgit.api import notes

        return notes.evaluate(self, revs, score=score, name=name, **kwargs)

    def push_notes(self, remote: str) -> dict[str, Any]:
        """Union our notes with the remote's and move its refs/notes/metrics by compare-and-swap."""
        from mfgit.api.remotes import open_remote
        from mfgit.remote.sync import push_notes

        name, transport = open_remote(self, remote)
        try:
            return push_notes(self, transport, name)
        finally:
            transport.close()

    def fetch_notes(self, remote: str) -> dict[str, Any]:
        """Download the remote's notes and union them into ours."""
        from mfgit.api.remotes import open_remote
        from mfgit.remote.sync import fetch_notes

        name, transport = open_remote(self, remote)
        try:
            return fetch_notes(self, transport, name)
        finally:
            transport.close()

    # -- reachability, fsck, gc ------------------------------------------------------------------

    def ref_tips(self) -> dict[str, str]:
        """Every ref and reflog value that keeps objects alive."""
        tips: dict[str, str] = {}
        head = self.refs.read("HEAD")
        if head and not head.startswith(SYMREF):
            tips["HEAD"] = head
        names = self.refs.names("refs/")
        for n in names:
            v = self.refs.read(n)
            if v and not v.startswith(SYMREF):
                tips[n] = v
        for n in names + ["HEAD"]:
            for i, e in enumerate(self.refs.reflog(n)):
                for v in (e.old, e.new):
                    if v and is_object_id(v):
                        tips[f"{n}@{{{i}}}"] = v
        return tips

    def reachable(self, tips: list[str], *, missing: dict[str, str] | None = None) -> set[str]:
        """All object ids reachable from `tips`; absent ones go into `missing`."""
        seen: set[str] = set()
        stack = list(tips)
        while stack:
            oid = stack.pop()
            if oid in seen:
                continue
            seen.add(oid)
            try:
                kind, payload = self.store.get(oid)
                obj = decode_object(oid, kind, payload) if kind in ("commit", "tag", "adapter") else None
            except ObjectNotFound:
                if missing is not None:
                    missing.setdefault(oid, "missing")
                continue
            except (CorruptObject, MalformedObject):
                if missing is not None:
                    missing.setdefault(oid, "corrupt")  # what it names is unknown
                continue
            if kind == "commit":
                c = obj
                stack.extend(c.parents)
                stack.append(c.adapter)
            elif kind == "tag":
                stack.append(obj.target)
            elif kind == "adapter":
                a = obj
                for t in a.referenced_ids():
                    if t not in seen:
                        if not self.store.has(t):
                            seen.add(t)
                            if missing is not None:
                                missing.setdefault(t, "missing")
                        else:
                            seen.add(t)
        return seen

    def fsck(self, *, read_data: bool = False, repair_from: str | None = None) -> dict[str, Any]:
        """Check objects and refs; with `repair_from` (a remote name or URL), replace
        missing and corrupt objects with that remote's verified copies first."""
        if repair_from is not None:
            from mfgit.api.remotes import fsck_repair

            return fsck_repair(self, repair_from, read_data=read_data)
        from mfgit.api.maintenance import fsck

        return fsck(self, read_data=read_data)

    def gc(self, *, prune_older_than: float = 14 * 86400, dry_run: bool = False) -> dict[str, Any]:
        from mfgit.api.maintenance import gc

        return gc(self, prune_older_than=prune_older_than, dry_run=dry_run)


# -- helpers ---------------------------------------------------------------------------------


def _neg_time(ts: str) -> str:
    # ISO timestamps sort as strings; invert for a max-heap on time.
    return "".join(chr(0x10FFFF - ord(c)) for c in ts)


def _base_model(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": config.get("base_model_name_or_path"),
        "revision": config.get("revision"),
    }


def _split_tensor(oid: str, payload: bytes) -> tuple[TensorHeader, memoryview]:
    from mfgit.objects.model import split_tensor_payload

    try:
        header, raw = split_tensor_payload(payload)
    except Exception as e:
        raise MalformedObject(oid, f"bad tensor header: {e}") from None
    size = st.DTYPE_SIZES.get(header.dtype)
    if size is None:
        raise MalformedObject(oid, f"unknown dtype {header.dtype}")
    n = 1
    for d in header.shape:
        n *= d
    if n * size != len(raw):
        raise MalformedObject(oid, f"{header.dtype}{list(header.shape)} needs {n * size} bytes, object has {len(raw)}")
    return header, raw


_TORCH_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "U16": "uint16", "U32": "uint32", "U64": "uint64",
}


def _torch_from_bytes(header: TensorHeader, raw: memoryview):
    import torch

    dtype = getattr(torch, _TORCH_DTYPES[header.dtype])
    buf = bytearray(raw)  # a writable copy, owned by the tensor
    if len(buf) == 0:
        return torch.empty(header.shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(header.shape)


def _torch_to_bytes(t) -> tuple[TensorHeader, memoryview]:
    import torch

    rev = {getattr(torch, v): k for k, v in _TORCH_DTYPES.items() if hasattr(torch, v)}
    t = t.detach().to("cpu").contiguous()
    if t.dtype not in rev:
        raise InvalidAdapter("tensor", f"dtype {t.dtype} cannot be stored")
    raw = memoryview(t.view(torch.uint8).numpy().reshape(-1)) if t.numel() else memoryview(b"")
    return TensorHeader(rev[t.dtype], tuple(t.shape)), raw


def _pread_into(fd: int, out: memoryview, offset: int, where: str) -> None:
    """Fill `out` from `fd` at `offset`; a file that ends early is a clear error."""
    got = 0
    while got < len(out):
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [out[got:]], offset + got)
        else:  # no preadv (some BSDs, older macOS): read, then copy into place
            chunk = os.pread(fd, len(out) - got, offset + got)
            n = len(chunk)
            out[got : got + n] = chunk
        if n == 0:
            raise InvalidAdapter(where, f"the file shrank while it was read (got {got} of {len(out)} bytes at {offset}); "
                                 "commit again once the adapter is written")
        got += n


def _write_safetensors_parallel(fd: int, specs, fetch, metadata) -> None:
    """Write a safetensors file laid out as the library does, tensors in parallel.

    The layout fixes every tensor's offset up front, so each worker fetches
    (reads, checks, decodes) a tensor into its own reused buffer and writes
    it in place with pwrite: no tensor waits for the one before it, and
    memory stays at one buffer per worker. `fetch(name)` returns the raw
    bytes, valid until the same thread fetches again.
    """
    entries = []
    for name, dtype, shape in specs:
        n = st.DTYPE_SIZES[dtype]
        for d in shape:
            n *= d
        entries.append((name, dtype, shape, n))
    head, order = st.library_layout(entries, metadata)
    by_name = {e[0]: e for e in entries}
    jobs = []
    offset = len(head)
    for name in order:
        n = by_name[name][3]
        jobs.append((name, n, offset))
        offset += n
    _pwrite_all(fd, memoryview(head), 0)

    def one(job: tuple[str, int, int]) -> None:
        name, n, at = job
        raw = fetch(name)
        if len(raw) != n:
            raise MalformedObject(name, f"tensor has {len(raw)} bytes, expected {n}")
        _pwrite_all(fd, memoryview(raw), at)
        start_writeback(fd, at, n)  # the final fsync then finds most of the file written

    _parallel_map(one, jobs)
    os.ftruncate(fd, offset)  # a file of exactly the layout's length, even if it ends in empty tensors


class _Job:
    """A call that may run on a thread of its own while the caller works.

    start() runs it in the background; result() waits for it (or runs it
    now if it never started) and returns its value or raises its error.
    """

    def __init__(self, fn) -> None:
        self._fn = fn
        self._thread: threading.Thread | None = None
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as e:  # handed to the caller by result()
            self._error = e
        self._done = True

    def start(self) -> None:
        if self._thread is None and not self._done:
            self._thread = threading.Thread(target=self._run, name="mfgit-job", daemon=True)
            self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def result(self) -> Any:
        if self._thread is None and not self._done:
            self._run()
        self.wait()
        if self._error is not None:
            raise self._error
        return self._value


def _parallel_map(fn, items) -> list:
    """fn over items on up to four threads, results in order.

    At the first error, calls not yet started are cancelled and the error
    is raised once the running ones end: a bad tensor fails a commit or a
    checkout at once instead of after every other tensor was processed.
    """
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(fn, item) for item in items]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            for f in pending:
                f.cancel()
            wait(pending)
            raise failed[0].exception()
    return [f.result() for f in futures]


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def adapter_summary(aid: str, adapter: Adapter) -> dict[str, Any]:
    dtypes = sorted({t["dtype"] for t in adapter.tensors.values()})
    ranks = sorted({m["r"] for m in adapter.modules.values()})
    nbytes = 0
    for t in adapter.tensors.values():
        n = st.DTYPE_SIZES.get(t["dtype"], 0)
        for d in t["shape"]:
            n *= d
        nbytes += n
    cfg = adapter.config
    return {
        "id": aid,
        "base_model": adapter.base_model,
        "modules": len(adapter.modules),
        "tensors": len(adapter.tensors),
        "bytes": nbytes,
        "dtypes": dtypes,
        "ranks": ranks,
        "lora_alpha": cfg.get("lora_alpha"),
        "r": cfg.get("r"),
        "use_rslora": bool(cfg.get("use_rslora")),
        "target_modules": cfg.get("target_modules"),
    }

