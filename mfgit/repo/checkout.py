"""The checkout pipeline: a commit's adapter out as a PEFT adapter directory.

The safetensors file is laid out first (the library's order and offsets),
then each worker reads, checks and decodes a tensor into its own reused
buffer and writes it in place; everything is staged in a temporary
directory inside the target and moved into place only once every tensor
was read and checked, so a corrupt object leaves no file behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from mfgit.errors import IsAMixture, MalformedObject, OutputInTheWay, UnsafePath
from mfgit.formats import peft as peftfmt
from mfgit.formats import safetensors as st
from mfgit.formats.dtypes import nbytes
from mfgit.formats.hubcard import CARD_NAME
from mfgit.objects.model import Adapter, Commit
from mfgit.parallel import parallel_map, progress_counter
from mfgit.store.fileio import fsync_dir, start_writeback

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


def checkout(repo: "BaseRepository", rev: str, to: str | os.PathLike, *, force: bool = False,
             progress: Callable[[int, int, str], None] | None = None, with_attachments: bool = False) -> Path:
    """Write the adapter of `rev` as a PEFT adapter directory at `to`.

    Every tensor is checked against its digest as it is read; on any error
    the partial output is removed and nothing is left at the final names.
    `progress(bytes_done, bytes_total, tensor_name)` follows the tensors written.
    `with_attachments` also writes each attachment whose bytes are here
    (public ones, and private ones at the site that holds them) under
    ``attachments/NAME``, checked against its digest like the tensors.
    """
    cid = repo.resolve(rev)
    commit = repo.read_commit(cid)
    if commit.is_mixture:  # --- mixture: its members and mixture.json ---
        return write_mixture_dir(repo, cid, commit, to, force=force, progress=progress)
    adapter = repo.read_adapter(commit.adapter)
    card = card_entry(adapter, commit)
    # --- attachments ---
    extra = attachment_files(repo, cid, commit, skip=card) if with_attachments else {}
    # --- end attachments ---
    return write_adapter_dir(repo, with_card(adapter, commit), to, force=force, progress=progress, attachments=extra)


def card_entry(adapter: Adapter, commit: Commit) -> dict | None:
    """The commit's model card: its public attachment README.md, unless the manifest holds a
    README.md of its own (commits made before the card was an attachment)."""
    if CARD_NAME in adapter.files:
        return None
    return next((a for a in commit.attachments if a["name"] == CARD_NAME and not a["private"]), None)


def with_card(adapter: Adapter, commit: Commit) -> Adapter:
    """`adapter` with the commit's card among its files, so the directory is written back as
    it was committed: README.md beside the adapter, where the Hub reads it."""
    entry = card_entry(adapter, commit)
    if entry is None:
        return adapter
    return dataclasses.replace(adapter, files={**adapter.files, CARD_NAME: entry["id"]})


def attachment_files(repo: "BaseRepository", cid: str, commit, skip: dict | None = None) -> dict[str, bytes]:
    """Relative path under the output → checked bytes, for each attachment available here
    (but `skip`, the card, already written as the directory's README.md)."""
    from mfgit.repo.attachments import entry_bytes, private_state

    return {f"{ATTACHMENTS_DIR}/{a['name']}": entry_bytes(repo, cid, commit, a) for a in commit.attachments
            if (not a["private"] or private_state(repo, a) != "absent") and a is not skip}


ATTACHMENTS_DIR = "attachments"


def _check_destinations(out: Path, names: list[str]) -> None:
    """Every name the checkout will write is absent or a regular file.

    Checked before anything is written, and again just before the files
    are moved into place: a refusal half way through would leave a mix of
    old and new files, which is exactly what --force must never do.
    """
    for name in names:
        target = out / name
        if os.path.islink(target):
            raise OutputInTheWay(str(target), "a symbolic link")
        if os.path.lexists(target) and not os.path.isfile(target):
            raise OutputInTheWay(str(target), "a directory" if os.path.isdir(target) else "not a regular file")


def write_adapter_dir(repo: "BaseRepository", adapter: Adapter, to: str | os.PathLike, *,
                      force: bool = False, progress: Callable[[int, int, str], None] | None = None,
                      attachments: dict[str, bytes] | None = None) -> Path:
    """`attachments`: relative POSIX path under `to` → bytes, already checked (names by the schema's rule)."""
    attachments = attachments or {}
    for name in adapter.files:
        peftfmt.safe_join(Path(to), name)  # refuse before writing anything
    names = [peftfmt.WEIGHTS_NAME, peftfmt.CONFIG_NAME, *adapter.files]
    # --- attachments: every folder on the way must be a real folder inside `to` ---
    if attachments and any(n.casefold() == ATTACHMENTS_DIR for n in adapter.files):
        raise OutputInTheWay(str(Path(to) / ATTACHMENTS_DIR), "a file of the adapter where its attachments go")
    _check_attachment_paths(Path(to), list(attachments))
    names += list(attachments)
    # --- end attachments ---
    created = not os.path.lexists(to)
    out = peftfmt.prepare_output_dir(to, force=force)
    _check_destinations(out, names)
    staging = Path(tempfile.mkdtemp(prefix=".mfgit-checkout-", dir=out))
    try:
        # Not `names`: those are the destinations, checked again before the renames.
        tensor_names = sorted(adapter.tensors)
        specs = [(n, adapter.tensors[n]["dtype"], tuple(adapter.tensors[n]["shape"])) for n in tensor_names]
        local = threading.local()
        tick = progress_counter(progress, sum(nbytes(s[1], s[2]) for s in specs))

        def fetch(name: str) -> memoryview:
            t = adapter.tensors[name]
            # Decoded into this thread's buffer, reused tensor after tensor.
            buf = getattr(local, "buf", None)
            if buf is None:
                buf = local.buf = bytearray()
            header, raw = repo.read_tensor(t["id"], out=buf)
            if header.dtype != t["dtype"] or list(header.shape) != list(t["shape"]):
                raise MalformedObject(t["id"], f"manifest says {t['dtype']}{t['shape']}, "
                                               f"object is {header.dtype}{list(header.shape)}")
            if tick:
                tick(len(raw), name)
            return raw

        weights_tmp = staging / peftfmt.WEIGHTS_NAME
        fd = os.open(weights_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask, like open()
        try:
            write_safetensors_parallel(fd, specs, fetch, adapter.metadata)
            os.fsync(fd)
        finally:
            os.close(fd)
        (staging / peftfmt.CONFIG_NAME).write_bytes(peftfmt.config_bytes(adapter.config))
        for name, bid in adapter.files.items():
            (staging / name).write_bytes(repo.read_object(bid).data)
        # --- attachments: staged beside the adapter, in a folder of their own ---
        for rel, data in attachments.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        _check_attachment_paths(out, list(attachments))
        # --- end attachments ---
        _check_destinations(out, names)
        # Renames of regular files over regular files in one directory: none
        # of them can be refused now, so the new adapter lands whole.
        for entry in sorted(staging.iterdir()):
            if entry.name == ATTACHMENTS_DIR and attachments:
                continue
            os.replace(entry, out / entry.name)
        # --- attachments: file by file (a folder cannot replace a folder in one rename) ---
        for rel in sorted(attachments):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, out / rel)
        # --- end attachments ---
        fsync_dir(out)
    except BaseException:
        if created:  # leave no trace of a failed checkout
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _check_attachment_paths(out: Path, rels: list[str]) -> None:
    """Each folder on the way to an attachment is absent or a real folder (never a link or a file),
    so no attachment is written outside `out` (invariant 5)."""
    for rel in rels:
        parts = rel.split("/")
        if any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
            raise UnsafePath(rel, "attachment names are relative paths inside the output directory")
        d = out
        for part in parts[:-1]:
            d = d / part
            if os.path.islink(d):
                raise OutputInTheWay(str(d), "a symbolic link")
            if os.path.lexists(d) and not os.path.isdir(d):
                raise OutputInTheWay(str(d), "a file where a folder of attachments goes")


def write_safetensors_parallel(fd: int, specs: Iterable[tuple[str, str, tuple[int, ...]]],
                               fetch: Callable[[str], memoryview], metadata: dict | None) -> None:
    """Write a safetensors file laid out as the library does, tensors in parallel.

    The layout fixes every tensor's offset up front, so each worker fetches
    (reads, checks, decodes) a tensor into its own reused buffer and writes
    it in place with pwrite: no tensor waits for the one before it, and
    memory stays at one buffer per worker. `fetch(name)` returns the raw
    bytes, valid until the same thread fetches again.
    """
    entries = [(name, dtype, shape, nbytes(dtype, shape)) for name, dtype, shape in specs]
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

    parallel_map(one, jobs)
    os.ftruncate(fd, offset)  # a file of exactly the layout's length, even if it ends in empty tensors


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def write_mixture_dir(repo: "BaseRepository", cid: str, commit: Commit, to: str | os.PathLike, *,
                      force: bool = False, progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Write the members of mixture `cid` under ``to/members/<n>-<short id>/`` and ``to/mixture.json``.

    Everything is written into a staging directory inside the target first
    and moved into place only when every member was read and checked, as a
    plain checkout does.
    """
    from mfgit.repo.mixture import CHECKOUT_FORMAT, MEMBERS_DIR, MIXTURE_FILE, member_dir_name

    created = not os.path.lexists(to)
    out = peftfmt.prepare_output_dir(to, force=force)
    for name in (MIXTURE_FILE, MEMBERS_DIR):
        target = out / name
        if os.path.islink(target):
            raise OutputInTheWay(str(target), "a symbolic link")
    if os.path.lexists(out / MIXTURE_FILE) and not os.path.isfile(out / MIXTURE_FILE):
        raise OutputInTheWay(str(out / MIXTURE_FILE), "not a regular file")
    if os.path.lexists(out / MEMBERS_DIR) and not os.path.isdir(out / MEMBERS_DIR):
        raise OutputInTheWay(str(out / MEMBERS_DIR), "not a directory")
    staging = Path(tempfile.mkdtemp(prefix=".mfgit-checkout-", dir=out))
    try:
        doc_members = []
        for i, (mid, w) in enumerate(commit.mixture_members()):
            name = member_dir_name(i, mid)
            member = repo.read_commit(mid)
            write_adapter_dir(repo, with_card(repo.read_adapter(member.adapter), member), staging / MEMBERS_DIR / name,
                              progress=progress)
            doc_members.append({"commit": mid, "weight": w, "site": member.site, "path": f"{MEMBERS_DIR}/{name}"})
        doc = {"format": CHECKOUT_FORMAT, "commit": cid, "combine": commit.mixture["combine"],
               "formula": "sum_j weight_j * softmax(logits of the base model with members[j])",
               "base_model": repo.read_adapter(commit.adapter).base_model, "members": doc_members}
        (staging / MIXTURE_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        # The old members/ (with --force) is moved aside, the new one renamed in, then the old removed:
        # at every instant there is one whole members/ or none.
        old = staging / ".old-members"
        if os.path.lexists(out / MEMBERS_DIR):
            os.rename(out / MEMBERS_DIR, old)
        os.rename(staging / MEMBERS_DIR, out / MEMBERS_DIR)
        os.replace(staging / MIXTURE_FILE, out / MIXTURE_FILE)
        fsync_dir(out)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def load_adapter(repo: "BaseRepository", base_model, rev: str = "HEAD", *, adapter_name: str = "default", **kwargs):
    """Load `rev` onto `base_model` as a peft.PeftModel."""
    from peft import PeftModel

    if repo.read_commit(repo.resolve(rev)).is_mixture:
        raise IsAMixture(rev, "it has no one adapter to load (Repository.load_mixture loads all its members)")
    with tempfile.TemporaryDirectory(prefix="mfgit-load-") as tmp:
        path = checkout(repo, rev, Path(tmp) / "adapter")
        return PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name, **kwargs)
