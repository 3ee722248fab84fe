"""Repository: the verbs users call, on the core repository (``from mfgit import Repository``).

`Repository` is the core repository (mfgit.repo.base.BaseRepository: objects,
revisions, HEAD) with every verb as a method. Each method is one call of the
module that does the work — mfgit.repo for the core, mfgit.api, mfgit.audit
and mfgit.remote for the rest — so that the CLI, the Python API and the
tests all go through the same code. Modules that need torch or a transport
are imported when their verb is called, so that `import mfgit` stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from mfgit.repo import branches as _branches
from mfgit.repo import history as _history
from mfgit.repo.base import DEFAULT_BRANCH, GITDIR, BaseRepository, CommitInfo, Signer

__all__ = ["Repository", "CommitInfo", "GITDIR", "DEFAULT_BRANCH"]


class Repository(BaseRepository):
    # -- history ---------------------------------------------------------------------

    def walk(self, starts: list[str], *, exclude: list[str] | None = None,
             first_parent: bool = False) -> Iterator[CommitInfo]:
        """Commits reachable from `starts` and not from `exclude`, newest first."""
        return _history.walk(self, starts, exclude=exclude, first_parent=first_parent)

    def log(self, rev: str = "HEAD", *, n: int | None = None, first_parent: bool = False) -> list[CommitInfo]:
        """History from `rev` (or ``A..B``: reachable from B but not A), newest first."""
        return _history.log(self, rev, n=n, first_parent=first_parent)

    def show(self, rev: str = "HEAD") -> dict[str, Any]:
        return _history.show(self, rev)

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return _history.is_ancestor(self, ancestor, descendant)

    # -- commit and checkout ------------------------------------------------------------

    def commit(self, source: Any, message: str, **kwargs: Any) -> CommitInfo:
        """Commit a PEFT adapter directory, a PeftModel, or a raw LoRA state dict (``lora={"r": 16, "alpha": 16}``,
        ``base_model=``, ``allow_pickle=`` for .pt) on the current branch; see mfgit.repo.importer.commit."""
        from mfgit.repo.importer import commit

        return commit(self, source, message, **kwargs)

    def checkout(self, rev: str, to: str | os.PathLike, *, force: bool = False, progress=None,
                 with_attachments: bool = False) -> Path:
        """Write the adapter of `rev` as a PEFT adapter directory at `to`
        (and, `with_attachments`, those whose bytes are here under `to`/attachments/NAME)."""
        from mfgit.repo.checkout import checkout

        return checkout(self, rev, to, force=force, progress=progress, with_attachments=with_attachments)

    # --- attachments ---

    def attachments(self, rev: str = "HEAD") -> list[dict[str, Any]]:
        """The attachments of `rev`: name, size, digest, private, id (public ones) and
        whether their bytes are in this repository (``present``)."""
        from mfgit.repo.attachments import listing

        return listing(self, rev)

    def read_attachment(self, rev: str, name: str) -> bytes:
        """The bytes of attachment `name` of `rev`, checked against its digest
        (AttachmentPrivate for a private one committed at another site)."""
        from mfgit.repo.attachments import read

        return read(self, rev, name)

    # --- end attachments ---

    def write_adapter_dir(self, adapter, to: str | os.PathLike, *, force: bool = False) -> Path:
        from mfgit.repo.checkout import write_adapter_dir

        return write_adapter_dir(self, adapter, to, force=force)

    def load_adapter(self, base_model, rev: str = "HEAD", **kwargs: Any):
        """Load `rev` onto `base_model` as a peft.PeftModel."""
        from mfgit.repo.checkout import load_adapter

        return load_adapter(self, base_model, rev, **kwargs)

    def store_adapter_tensors(self, config: dict, tensors: dict[str, Any], metadata: dict | None = None,
                              base_model: dict | None = None) -> str:
        """Store torch tensors as a new adapter (a merge's output); returns its id."""
        from mfgit.repo.importer import store_adapter

        return store_adapter(self, config, tensors, metadata, base_model)

    # -- branches, tags, status ------------------------------------------------------------

    def branches(self, *, remote: bool = False) -> list[dict[str, Any]]:
        return _branches.branches(self, remote=remote)

    def create_branch(self, name: str, start: str | None = None, *, force: bool = False) -> str:
        return _branches.create_branch(self, name, start, force=force)

    def delete_branch(self, name: str, *, force: bool = False) -> str:
        return _branches.delete_branch(self, name, force=force)

    def switch(self, name: str, *, create: bool = False, orphan: bool = False, start: str | None = None) -> None:
        _branches.switch(self, name, create=create, orphan=orphan, start=start)

    def tag(self, name: str, rev: str = "HEAD", *, message: str | None = None, force: bool = False,
            sign: Signer | None = None) -> str:
        return _branches.tag(self, name, rev, message=message, force=force, sign=sign)

    def tags(self) -> list[dict[str, Any]]:
        return _branches.tags(self)

    def decorations(self) -> dict[str, list[str]]:
        """commit id → the names pointing at it, as log shows them."""
        return _branches.decorations(self)

    def status(self) -> dict[str, Any]:
        from mfgit.repo.status import status

        return status(self)

    # -- merge --------------------------------------------------------------------------------

    def merge(self, revs: list[str], **kwargs: Any):
        """Merge revisions in weight space and commit; see mfgit.api.merging.

        Strategy parameters may be given as keywords or in ``params``:
        ``repo.merge(["sites/a", "sites/b"], strategy="ties", density=0.2, weights=[0.5, 0.5],
        rank=16, seed=7)``.
        """
        from mfgit.api.merging import merge_keywords

        return merge_keywords(self, list(revs), **kwargs)

    # -- mixture: an output-space composite (MedForge-Mixture) ---------------------------------

    def mix(self, revs: list[str], **kwargs: Any):
        """Commit the mixture Σ wⱼ·softmax(member j) of `revs`; see mfgit.api.mixture.

        ``repo.mix(["sites/a", "sites/b"], weights=[0.6, 0.4])``, or searched:
        ``repo.mix(revs, search="weights", score=fn, stagewise=True)``.
        """
        from mfgit.api.mixture import mix

        return mix(self, list(revs), **kwargs)

    def load_mixture(self, base_model, rev: str = "HEAD", **kwargs: Any):
        """The mixture `rev` on `base_model` as a torch module returning Σ wⱼ·softmax(member j's logits)."""
        from mfgit.api.mixture import load_mixture

        return load_mixture(self, base_model, rev, **kwargs)

    def reproduce_merge(self, rev: str, **kwargs: Any) -> dict[str, Any]:
        """Re-run the merge commit `rev` from its recorded recipe and inputs."""
        from mfgit.merge.replay import reproduce

        return reproduce(self, self.resolve(rev), **kwargs)

    # -- remotes ---------------------------------------------------------------------------------

    def remote_add(self, name: str, url: str, **s3_options: Any) -> None:
        """Add a remote (a path, file:///path or s3://bucket/prefix); S3 options: endpoint, region, profile."""
        from mfgit.api import remotes

        remotes.remote_add(self, name, url, **s3_options)

    def remote_remove(self, name: str) -> None:
        from mfgit.api import remotes

        remotes.remote_remove(self, name)

    def remotes(self) -> list[dict[str, Any]]:
        from mfgit.api import remotes

        return remotes.remotes(self)

    def push(self, remote: str, refspecs: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Upload missing objects, then move the remote branch by compare-and-swap."""
        from mfgit.api import remotes

        return remotes.push(self, remote, refspecs, **kwargs)

    def fetch(self, remote: str, **kwargs: Any) -> dict[str, Any]:
        """Download what the remote has and we lack; update refs/remotes/<remote>/*."""
        from mfgit.api import remotes

        return remotes.fetch(self, remote, **kwargs)

    def pull(self, remote: str, branch: str | None = None, **kwargs: Any) -> dict[str, Any]:
        from mfgit.api import remotes

        return remotes.pull(self, remote, branch, **kwargs)

    @classmethod
    def clone(cls, url: str, directory: str | os.PathLike, **kwargs: Any) -> "Repository":
        """A new repository at `directory` holding the remote's branches as origin/*."""
        from mfgit.api import remotes

        repo, _report = remotes.clone(url, directory, **kwargs)
        return cls.open(repo.worktree or repo.gitdir)

    def push_notes(self, remote: str) -> dict[str, Any]:
        """Union our notes with the remote's and move its refs/notes/metrics by compare-and-swap."""
        from mfgit.api import remotes

        return remotes.push_notes(self, remote)

    def fetch_notes(self, remote: str) -> dict[str, Any]:
        """Download the remote's notes and union them into ours."""
        from mfgit.api import remotes

        return remotes.fetch_notes(self, remote)

    # -- audit: diff, lineage, blame, verify, export, signing ---------------------------------------

    def diff(self, rev_a: str, rev_b: str, *, stat: bool = False) -> dict[str, Any]:
        """Per-module comparison of two commits' adapters (exact, from the factors)."""
        from mfgit.audit.diff import diff

        return diff(self, rev_a, rev_b, stat=stat)

    def lineage(self, rev: str = "HEAD") -> dict[str, Any]:
        """The merge DAG from `rev` down to its leaves, with effective weights."""
        from mfgit.audit.lineage import lineage

        return lineage(self, rev)

    def write_lineage_page(self, lineage: dict[str, Any] | str, path: str | os.PathLike) -> Path:
        """One self-contained HTML page drawing a lineage (a `lineage()` document, or a revision)."""
        from mfgit.render.html import lineage_html
        from mfgit.store.fileio import atomic_write

        data = self.lineage(lineage) if isinstance(lineage, str) else lineage
        atomic_write(path, lineage_html(data).encode("utf-8"))
        return Path(path)

    def pages(self, out: str | os.PathLike, *, progress=None) -> dict[str, Any]:
        """Static HTML pages of the repository in directory `out` (sites, commits, merges, notes); see docs/pages.md."""
        from mfgit.api.pages import pages

        return pages(self, out, progress=progress)

    def blame(self, rev: str = "HEAD", *, first_parent: bool = True) -> dict[str, Any]:
        """For each module of `rev`, the commit that last changed it."""
        from mfgit.audit.blame import blame

        return blame(self, rev, first_parent=first_parent)

    def verify(self, rev: str = "HEAD", **kwargs: Any) -> dict[str, Any]:
        """Integrity, and optionally reproducibility (reproduce=True) and signatures (signatures=True)."""
        from mfgit.audit.verify import verify

        return verify(self, rev, **kwargs)

    def export(self, rev: str, outdir: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
        """PEFT directory of `rev`, with a model card (card=True) and a signed manifest (manifest=True)."""
        from mfgit.audit.export import export

        return export(self, rev, outdir, **kwargs)

    def signer(self, key: str | os.PathLike | None = None) -> Signer:
        """The sign= callable for commit/merge/tag, from `key` or config signing.key."""
        from mfgit.audit.signing import repo_signer

        return repo_signer(self, key)

    # -- notes: metrics measured at the sites, attached to commits ----------------------------------

    def notes_for(self, commit_id: str) -> list[dict[str, Any]]:
        """The notes attached to `commit_id`, each checked (``ok``, ``signature``, ``problem``)."""
        from mfgit.audit.notes import notes_for

        return notes_for(self, commit_id)

    def notes_by_commit(self, commit_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        from mfgit.audit.notes import notes_by_commit

        return notes_by_commit(self, commit_ids)

    def notes_show(self, rev: str = "HEAD") -> dict[str, Any]:
        from mfgit.api import notes

        return notes.show(self, rev)

    def notes_list(self) -> dict[str, Any]:
        from mfgit.api import notes

        return notes.listing(self)

    def evaluate(self, revs: list[str], *, score: Any, name: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Score `revs` with the user's function on this site's data; attach the values as notes."""
        from mfgit.api import notes

        return notes.evaluate(self, revs, score=score, name=name, **kwargs)

    # -- reachability, fsck, gc ------------------------------------------------------------------

    def ref_tips(self) -> dict[str, str]:
        """Every ref and reflog value that keeps objects alive."""
        from mfgit.repo.reachability import ref_tips

        return ref_tips(self)

    def reachable(self, tips: list[str], *, missing: dict[str, str] | None = None) -> set[str]:
        """All object ids reachable from `tips`; absent ones go into `missing`."""
        from mfgit.repo.reachability import reachable

        return reachable(self, tips, missing=missing)

    def fsck(self, *, read_data: bool = False, repair_from: str | None = None, progress=None) -> dict[str, Any]:
        """Check objects and refs; with `repair_from` (a remote name or URL), replace
        missing and corrupt objects with that remote's verified copies first."""
        if repair_from is not None:
            from mfgit.api.remotes import fsck_repair

            return fsck_repair(self, repair_from, read_data=read_data)
        from mfgit.repo.fsck import fsck

        return fsck(self, read_data=read_data, progress=progress)

    def gc(self, *, prune_older_than: float = 14 * 86400, dry_run: bool = False, progress=None) -> dict[str, Any]:
        from mfgit.repo.gc import gc

        return gc(self, prune_older_than=prune_older_than, dry_run=dry_run, progress=progress)

    def reflog(self, ref: str | None = None) -> dict[str, Any]:
        """`ref`'s reflog (default: the current branch), newest first, and its damaged lines."""
        from mfgit.repo.reflog import show

        return show(self, ref)

    def reflog_expire(self, refs: list[str] | None = None, *, all_refs: bool = False, missing: bool = False,
                      malformed: bool = False, older_than: float | None = None) -> dict[str, Any]:
        """Drop reflog entries that reach missing objects, damaged lines, or entries older than `older_than` s."""
        from mfgit.repo.reflog import expire

        return expire(self, list(refs or []), all_refs=all_refs, missing=missing, malformed=malformed,
                      older_than=older_than)
