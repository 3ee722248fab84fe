"""The commit pipeline: a PEFT adapter directory (or a PeftModel, or a raw LoRA state dict) in, a commit out.

The user's files are only ever read (invariant 6). Tensors are read with
pread on a few threads, hashed, compressed and written as one store batch;
the manifest, then the commit, then the ref (invariant 4). The stat cache
lets a re-commit of an unchanged directory skip reading any tensor.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from mfgit.errors import BadLoraConfig, InvalidAdapter, InvalidAttachment, InvalidObject, InvalidRawLora, NothingToCommit
from mfgit.formats import peft as peftfmt
from mfgit.formats import rawlora
from mfgit.formats.hubcard import CARD_NAME, front_matter, split_card
from mfgit.formats import safetensors as st
from mfgit.objects.model import Adapter
from mfgit.parallel import Job, parallel_map, progress_counter
from mfgit.repo import attachments as _attachments
from mfgit.repo.crash import crashpoint
from mfgit.repo.provenance import code_revision, library_versions, parse_meta
from mfgit.repo.statcache import StatCache, quick_digest
from mfgit.repo.tensors import payload_heads, put_torch_tensors, raw_tensor_id

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository, CommitInfo, Signer


def base_model_of(config: dict[str, Any]) -> dict[str, Any]:
    """The base model identity a PEFT config records."""
    return {"name": config.get("base_model_name_or_path"), "revision": config.get("revision")}


def commit(repo: "BaseRepository", source: Any, message: str, *, meta: list[str] | dict | None = None,
           code: str | os.PathLike | None = None, allow_pickle: bool = False, allow_empty: bool = False,
           author: dict[str, str] | None = None, timestamp: str | None = None,
           sign: "Signer | None" = None, code_from: str | os.PathLike | None = None,
           progress: Callable[[int, int, str], None] | None = None,
           lora: Mapping[str, Any] | str | os.PathLike | None = None,
           base_model: str | None = None,
           attachments: Mapping[str, Any] | None = None,
           private_attachments: Mapping[str, Any] | None = None) -> "CommitInfo":
    """Commit a PEFT adapter directory (or a PeftModel, or a raw LoRA state dict) on the current branch.

    A PeftModel (any object with ``save_pretrained``) is saved into a
    temporary directory and that is committed: the one-line way to commit
    from a plain PyTorch loop (an attachment named README.md replaces the
    card PEFT writes). Its code revision is read from `code_from`
    (default: the working directory), since the temporary directory has none.
    `progress(bytes_done, bytes_total, tensor_name)` follows the tensor import.
    `attachments` / `private_attachments` map a name to a file or a folder
    (each of its files becomes NAME/relpath): see mfgit.repo.attachments.

    A raw LoRA state dict — a ``.pt`` / ``.safetensors`` file of the LoRA
    entries of a model's state dict, without adapter_config.json
    (`mfgit.formats.rawlora`) — is committed as the PEFT adapter it is:
    `lora` states its config (``{"r": 16, "alpha": 16, "dropout": 0.1}``, or
    the path of a JSON/YAML file of those keys), `base_model` names the base
    model. A ``.pt`` needs `allow_pickle` and is read by torch's restricted
    loader (``weights_only=True``).

    Raises InvalidAdapter / PickleRefused / SafetensorsError for bad input,
    LoraConfigNeeded / BadLoraConfig / InvalidRawLora / LoraRankMismatch for a raw state dict,
    InvalidAttachment for an attachment that cannot be committed,
    NothingToCommit if the adapter and attachments equal HEAD's (unless allow_empty),
    RefConflict if the branch moved meanwhile. The source is only read.
    """
    if not isinstance(source, (str, os.PathLike)):
        if lora is not None or base_model is not None:
            raise BadLoraConfig("lora", "is for a raw state dict file; a PeftModel has its own config")
        with tempfile.TemporaryDirectory(prefix="mfgit-peft-") as tmp:
            source.save_pretrained(tmp)
            if CARD_NAME in (attachments or {}) or CARD_NAME in (private_attachments or {}):
                # The card given replaces the template PEFT writes: a commit has one card.
                (Path(tmp) / CARD_NAME).unlink(missing_ok=True)
            return commit(repo, tmp, message, meta=meta, code=code, allow_empty=allow_empty,
                          author=author, timestamp=timestamp, sign=sign, code_from=code_from or os.getcwd(),
                          progress=progress, attachments=attachments, private_attachments=private_attachments)
    path = Path(source)
    ident = author or repo.identity()
    if lora is not None or base_model is not None or rawlora.is_raw_file(path):
        raw = rawlora.inspect_raw_file(path, rawlora.resolve_options(lora, base_model), allow_pickle=allow_pickle)
        config = raw.config
        source_doc = {"name": path.resolve().name, "format": "pickle" if raw.pickled else "safetensors",
                      "files": [path.name], "layout": "raw-state-dict", "adapter_name": raw.adapter_name}
        run_import = lambda start: import_raw_lora(repo, raw, before_import=start, progress=progress)  # noqa: E731
    else:
        whole = peftfmt.inspect_adapter_dir(path, allow_pickle=allow_pickle)
        # The model card is the commit's attachment README.md, not a file of the adapter.
        adir, card_path = split_card(whole)
        config = adir.config
        source_doc = {
            "name": path.resolve().name,
            "format": "pickle" if adir.pickled else "safetensors",
            "files": sorted([peftfmt.CONFIG_NAME, adir.weights.name] + [f.name for f in whole.extra_files]),
        }
        run_import = lambda start: import_adapter(repo, adir, before_import=start, progress=progress)  # noqa: E731
        if card_path is not None:
            attachments = _with_card(attachments, private_attachments, card_path)
    # --- attachments: read and checked before anything is stored ---
    staged = _attachments.stage(attachments, private_attachments)
    card = _card_metadata(staged)
    # --- end attachments ---
    branch_ref, parent = repo.commit_target()
    # Reading the code revision (GitPython: ~50 ms, mostly its import)
    # overlaps the tensor import when there is one: the workers spend
    # their time in hashing, compression and I/O, outside the GIL.
    code_job = Job(lambda: code_revision(code, required=True) if code else code_revision(code_from or path))
    try:
        adapter_id = run_import(code_job.start)
        entries = tuple(st.entry() for st in staged)
        if parent is not None and not allow_empty:
            head = repo.read_commit(parent)
            if head.adapter == adapter_id and _attachments.same_attachments(head.attachments, entries):
                raise NothingToCommit(adapter_id)
        # --- attachments: stored once the commit is decided, before it names them (objects before refs):
        # nothing to commit leaves no private copy behind ---
        _attachments.store(repo, staged, entries)
        # --- end attachments ---
    except BaseException:
        code_job.wait()
        raise
    code_info = code_job.result()
    provenance = {
        "kind": "import",
        "source": source_doc,
        "base_model": base_model_of(config),
        "code": code_info,
        "meta": parse_meta(meta),
        "tool": library_versions(),
    }
    if card is not None:  # only then: the ids of commits without a card stay what they were
        provenance["card"] = card
    return repo.write_commit(adapter_id, [parent] if parent else [], message, provenance,
                             branch_ref, parent, ident, timestamp, sign=sign,
                             attachments=entries)


def _card_metadata(staged: list[_attachments.Staged]) -> dict[str, Any] | None:
    """The front matter of the commit's card — its public attachment README.md, the directory's
    own or one given — if it has one."""
    card = next((s for s in staged if s.name == CARD_NAME and not s.private), None)
    if card is None:
        return None
    return front_matter(card.data.decode("utf-8", "replace"))


def _with_card(attachments: Mapping[str, Any] | None, private: Mapping[str, Any] | None,
               card_path: Path) -> dict[str, Any]:
    """The user's public attachments plus the directory's card, as attachment README.md."""
    for given in (attachments or {}, private or {}):
        if CARD_NAME in given:
            raise InvalidAttachment(CARD_NAME, f"the adapter directory has a model card, kept as attachment "
                                    f"{CARD_NAME}; remove the card from the directory or do not attach one",
                                    str(given[CARD_NAME]))
    return {**(attachments or {}), CARD_NAME: card_path}


def import_adapter(repo: "BaseRepository", adir: peftfmt.AdapterDir, *, before_import=None,
                   progress: Callable[[int, int, str], None] | None = None) -> str:
    """Store the adapter's tensors and manifest; return the manifest id.

    `before_import` is called when the stat cache cannot answer and the
    tensors are about to be read.
    """
    cache = StatCache(repo.gitdir / "statcache.json") if repo.gitdir else None
    files = [adir.path / peftfmt.CONFIG_NAME, adir.weights, *adir.extra_files]
    digest_fn = lambda: quick_digest(files[0], adir.weights)  # noqa: E731
    if cache is not None and not adir.pickled:
        cached = cache.lookup(adir.path, files, digest_fn)
        # Reused objects are freshened, under the store's writer lock (git's
        # rule): gc cannot delete them between here and the ref update, and
        # one it deleted before reads as absent, so the import runs again.
        if cached and repo.store.freshen(cached) and _adapter_complete(repo, cached):
            return cached
    if before_import is not None:
        before_import()
    adapter = _import_pickle(repo, adir) if adir.pickled else _import_safetensors(repo, adir, progress)
    aid = _put_checked(repo, adir, adapter)
    if cache is not None and not adir.pickled:
        cache.record(adir.path, files, digest_fn(), aid)
    return aid


def import_raw_lora(repo: "BaseRepository", raw: rawlora.RawLora, *, before_import=None,
                    progress: Callable[[int, int, str], None] | None = None) -> str:
    """Store a raw LoRA state dict under PEFT's names, with its built config; return the manifest id.

    No stat cache: the file is one of many checkpoints a script rewrites in
    place, and a pickle is read in full to be checked anyway.
    """
    if before_import is not None:
        before_import()
    adir = peftfmt.AdapterDir(raw.path, raw.config, raw.path, raw.pickled, [])
    try:
        if raw.pickled:
            adapter = _adapter_of_torch(repo, adir, {raw.names[k]: v for k, v in (raw.state or {}).items()})
        else:
            adapter = _import_safetensors(repo, adir, progress, names=raw.names)
        return _put_checked(repo, adir, adapter)
    except InvalidAdapter as e:  # the rules of a manifest, said of the file the user gave
        raise InvalidRawLora(str(raw.path), e.reason) from None


def _put_checked(repo: "BaseRepository", adir: peftfmt.AdapterDir, adapter: Adapter) -> str:
    # Before the manifest exists: a refused adapter leaves at most tensors
    # that nothing names (gc removes them), and no ref moves.
    check_tensors(adir.config, {k: (v["dtype"], tuple(v["shape"])) for k, v in adapter.tensors.items()},
                  str(adir.weights))
    try:
        aid = repo.put_adapter(adapter)
    except InvalidObject as e:  # what the checks above cannot see (e.g. metadata text)
        raise InvalidAdapter(str(adir.path), e.reason) from None
    crashpoint("after-adapter-object")
    return aid


def check_tensors(config: dict[str, Any], shapes: dict[str, tuple[str, tuple[int, ...]]], where: str) -> None:
    """Saved tensors (name → (dtype, shape)) that make a valid manifest with `config`:
    names a manifest can hold, LoRA modules of positive rank, and the rank PEFT
    would give each module equal to its factors' (InvalidAdapter naming `where`)."""
    for name in shapes:
        problem = peftfmt.tensor_name_problem(name)
        if problem:
            raise InvalidAdapter(where, f"tensor name {name[:80]!r}: {problem}")
    peftfmt.check_ranks(config, peftfmt.lora_modules(shapes, where), where)


def _adapter_complete(repo: "BaseRepository", aid: str) -> bool:
    try:
        adapter = repo.read_adapter(aid)
    except Exception:  # noqa: BLE001 - an unreadable cached entry only means: import again
        return False
    return all(repo.store.freshen(t) for t in adapter.referenced_ids())


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


def _import_safetensors(repo: "BaseRepository", adir: peftfmt.AdapterDir, progress=None,
                        names: dict[str, str] | None = None) -> Adapter:
    """`names` renames the file's tensors (a raw state dict's names → PEFT's)."""
    where = str(adir.weights)
    with repo.store.batch():
        # Read each tensor into memory with pread rather than mapping the
        # user's file: bytes that change or vanish while we work (a
        # checkpoint rewritten in place, a truncated file) can then
        # never make the stored bytes differ from the hashed ones, nor
        # kill the process with SIGBUS — a short read is a clear error.
        header = st.read_header(adir.weights)
        infos = list(header.tensors.values())
        if names is not None and set(header.tensors) != set(names):
            raise InvalidAdapter(where, "the file changed while it was read; commit again once it is written")
        saved = (lambda n: names[n]) if names is not None else (lambda n: n)  # noqa: E731
        heads = payload_heads(infos)
        fd = os.open(adir.weights, os.O_RDONLY)
        try:
            local = threading.local()
            data_offset = header.data_offset
            put_tensor = repo.store.put_tensor
            tick = progress_counter(progress, sum(i.end - i.start for i in infos))

            def one(info: st.TensorInfo) -> str:
                th, head = heads[(info.dtype, info.shape)]
                n = info.end - info.start
                # One read buffer per thread, reused: a fresh one per
                # tensor costs a page fault per 4 KiB and an munmap.
                buf = getattr(local, "buf", None)
                if buf is None or len(buf) < n:
                    buf = local.buf = bytearray(max(n, 1 << 20))
                raw = memoryview(buf)[:n]
                _pread_into(fd, raw, data_offset + info.start, where)
                tid = raw_tensor_id(th, head, raw)
                put_tensor(th, raw, tid, head=head)
                crashpoint("during-tensors")
                if tick:
                    tick(n, info.name)
                return tid

            # hashlib, zstd, numpy and pread release the GIL on large
            # buffers: two threads keep both cores busy on a big adapter.
            ids = parallel_map(one, infos)
        finally:
            os.close(fd)
        tensors = {saved(i.name): {"id": tid, "dtype": i.dtype, "shape": list(i.shape)}
                   for i, tid in sorted(zip(infos, ids), key=lambda p: saved(p[0].name))}
        files = _store_extra_files(repo, adir)
        crashpoint("after-tensors")
    modules = peftfmt.lora_modules({saved(i.name): (i.dtype, i.shape) for i in infos}, where)
    return Adapter(config=adir.config, base_model=base_model_of(adir.config), tensors=tensors,
                   modules=modules, metadata=header.metadata, files=files)



def _import_pickle(repo: "BaseRepository", adir: peftfmt.AdapterDir) -> Adapter:
    return _adapter_of_torch(repo, adir, peftfmt.load_pickle_tensors(adir.weights))


def _adapter_of_torch(repo: "BaseRepository", adir: peftfmt.AdapterDir, state: dict[str, Any]) -> Adapter:
    check_tensors(adir.config, {k: (str(v.dtype), tuple(v.shape)) for k, v in state.items()}, str(adir.weights))
    tensors = put_torch_tensors(repo.store, state)
    files = _store_extra_files(repo, adir)
    modules = peftfmt.lora_modules({k: (v["dtype"], tuple(v["shape"])) for k, v in tensors.items()}, str(adir.weights))
    return Adapter(config=adir.config, base_model=base_model_of(adir.config), tensors=tensors, modules=modules,
                   metadata={"format": "pt"}, files=files)


def _store_extra_files(repo: "BaseRepository", adir: peftfmt.AdapterDir) -> dict[str, str]:
    return {f.name: repo.store.put("blob", f.read_bytes()) for f in adir.extra_files}


def store_adapter(repo: "BaseRepository", config: dict, tensors: dict[str, Any], metadata: dict | None = None,
                  base_model: dict | None = None) -> str:
    """Store torch tensors and their manifest as a new adapter (a merge's output); return its id."""
    check_tensors(config, {k: (str(v.dtype), tuple(v.shape)) for k, v in tensors.items()}, "merge output")
    entries = put_torch_tensors(repo.store, tensors)
    modules = peftfmt.lora_modules({k: (v["dtype"], tuple(v["shape"])) for k, v in entries.items()}, "merge output")
    adapter = Adapter(config=config, base_model=base_model or base_model_of(config), tensors=entries,
                      modules=modules, metadata=metadata or {"format": "pt"}, files={})
    return repo.put_adapter(adapter)
