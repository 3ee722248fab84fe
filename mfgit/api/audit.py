"""The audit verbs: diff, lineage, blame, verify, export, and signing keys.

Thin entry points over `mfgit.audit`; `Repository.diff/lineage/blame/verify/
export/signer` delegate here and the CLI calls those. See docs/audit.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mfgit.errors import SigningKeyError

if TYPE_CHECKING:
    from mfgit.api.repository import Repository
    from mfgit.remote.transport import Transport


def diff(repo: "Repository", rev_a: str, rev_b: str, *, stat: bool = False) -> dict[str, Any]:
    from mfgit.audit.diff import diff as _diff

    return _diff(repo, rev_a, rev_b, stat=stat)


def lineage(repo: "Repository", rev: str = "HEAD") -> dict[str, Any]:
    from mfgit.audit.lineage import lineage as _lineage

    return _lineage(repo, rev)


def blame(repo: "Repository", rev: str = "HEAD", *, first_parent: bool = True) -> dict[str, Any]:
    from mfgit.audit.blame import blame as _blame

    return _blame(repo, rev, first_parent=first_parent)


def verify(repo: "Repository", rev: str = "HEAD", **kwargs: Any) -> dict[str, Any]:
    from mfgit.audit.verify import verify as _verify

    return _verify(repo, rev, **kwargs)


def export(repo: "Repository", rev: str, outdir: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    from mfgit.audit.export import export as _export

    return _export(repo, rev, outdir, **kwargs)


def signing_key_path(repo: "Repository") -> Path:
    value = repo.config.get("signing.key")
    if not value:
        raise SigningKeyError("(none)", "signing.key is not set")
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = (repo.worktree or repo.gitdir or Path(".")) / p
    return p


def signer(repo: "Repository", key: str | os.PathLike | None = None) -> Callable[[Any], Any]:
    """The sign= callable for commit / merge / tag, from `key` or config signing.key."""
    from mfgit.audit.signing import load_signing_key, signer as _signer

    return _signer(load_signing_key(key if key is not None else signing_key_path(repo)))


def keygen(path: str | os.PathLike, *, key_type: str = "ed25519", comment: str | None = None,
           force: bool = False) -> dict[str, Any]:
    from mfgit.audit.signing import keygen as _keygen

    return _keygen(path, key_type=key_type, comment=comment, force=force)


def check_push(repo: "Repository", transport: "Transport", remote_name: str, src: str, dst: str | None) -> None:
    """Refuse a push to a protected branch whose new commits fail `verify --signatures`."""
    from mfgit.audit.verify import check_push as _check_push
    from mfgit.remote.transport import KeyNotFound

    heads = "refs/heads/"
    local = repo.resolve(src)
    if dst is None:
        dst = src[len(heads):] if src.startswith(heads) else src
    dst_ref = dst if dst.startswith("refs/") else heads + dst
    if not dst_ref.startswith(heads):
        return
    try:
        current = transport.get_versioned(dst_ref)
    except KeyNotFound:
        current = None
    remote_value = current[0].decode("utf-8", "replace").strip() if current is not None else None
    try:
        policy_text = transport.get("allowed_signers").decode("utf-8")
    except KeyNotFound:
        policy_text = None
    _check_push(repo, local, dst_ref[len(heads):], remote_value=remote_value, remote_policy_text=policy_text,
                remote_name=remote_name)
