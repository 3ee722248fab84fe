"""The allowed-signers policy: which keys may sign for which branches.

The allowed-signers file (``<gitdir>/allowed_signers``, or config
``signing.allowedSigners PATH``) maps branch patterns to public keys, in the
spirit of git's ``gpg.ssh.allowedSignersFile``::

    # branch patterns (comma-separated globs)   key type   base64 key   comment
    main                   ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... coordinator@hub
    sites/hospital-a       ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... alice@hospital-a
    sites/*                ecdsa-sha2-nistp256 AAAAE2VjZHNh...

A branch matched by any pattern is *protected*: every commit attributed to it
must carry a valid signature by a key listed for a pattern that matches it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mfgit.audit.keys import PublicKey
from mfgit.audit.signing import SignatureCheck
from mfgit.errors import SigningKeyError

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


@dataclass(frozen=True)
class AllowedSigner:
    patterns: tuple[str, ...]
    key: PublicKey
    comment: str
    line: int

    def matches(self, branch: str) -> bool:
        return any(fnmatch.fnmatchcase(branch, p) for p in self.patterns)


@dataclass(frozen=True)
class AllowedSigners:
    source: str
    entries: tuple[AllowedSigner, ...]
    sha256: str = ""  # of the file's bytes: what a record of a decision names the policy by

    @classmethod
    def parse(cls, text: str, source: str, *, sha256: str | None = None) -> "AllowedSigners":
        entries = []
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) < 3:
                raise SigningKeyError(source, f"line {n}: expected 'BRANCH-PATTERNS KEYTYPE BASE64-KEY [comment]'")
            patterns = tuple(p for p in parts[0].split(",") if p)
            if not patterns:
                raise SigningKeyError(source, f"line {n}: no branch pattern")
            try:
                key = PublicKey.from_openssh(f"{parts[1]} {parts[2]}")
            except (ValueError, SigningKeyError) as e:
                raise SigningKeyError(source, f"line {n}: {e}") from None
            entries.append(AllowedSigner(patterns, key, " ".join(parts[3:]), n))
        return cls(source, tuple(entries), sha256 or hashlib.sha256(text.encode("utf-8")).hexdigest())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AllowedSigners":
        p = Path(path)
        try:
            raw = p.read_bytes()
            text = raw.decode("utf-8")
        except FileNotFoundError:
            raise SigningKeyError(str(p), "the allowed-signers file does not exist") from None
        except UnicodeDecodeError:
            raise SigningKeyError(str(p), "the allowed-signers file is not UTF-8 text") from None
        return cls.parse(text, str(p), sha256=hashlib.sha256(raw).hexdigest())

    def protected(self, branch: str | None) -> bool:
        return branch is not None and any(e.matches(branch) for e in self.entries)

    def allowed(self, branch: str, key: PublicKey) -> bool:
        kid = key.key_id
        return any(e.key.key_id == kid and e.matches(branch) for e in self.entries)

    def signer_of(self, key: PublicKey) -> AllowedSigner | None:
        kid = key.key_id
        for e in self.entries:
            if e.key.key_id == kid:
                return e
        return None


def judge(check: SignatureCheck, branch: str | None, policies: list[AllowedSigners]) -> tuple[bool, str]:
    """(ok, reason) of one commit attributed to `branch` under every policy given."""
    if check.status == "bad":
        return False, check.reason
    protected_by = [p for p in policies if p.protected(branch)]
    if check.status == "unsigned":
        if protected_by:
            return False, f"unsigned commit on protected branch {branch} (allowed signers: {protected_by[0].source})"
        return True, "not signed (branch not protected)"
    for p in protected_by:
        if not p.allowed(branch, check.key):
            who = p.signer_of(check.key)
            extra = f"; that key is allowed only for {','.join(who.patterns)}" if who else ""
            return False, f"signed by {check.key_id}, which is not allowed for branch {branch} in {p.source}{extra}"
    if protected_by:
        return True, f"good signature by an allowed key for {branch}"
    known = any(p.signer_of(check.key) for p in policies)
    return True, "good signature" + ("" if known or not policies else " (key not in allowed signers)")


def policy_path(repo: "BaseRepository"):
    value = repo.config.get("signing.allowedSigners")
    if value:
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = (repo.worktree or repo.gitdir or Path(".")) / p
        return p
    if repo.gitdir is not None:
        return repo.gitdir / "allowed_signers"
    return None


def load_policy(repo: "BaseRepository") -> AllowedSigners | None:
    """The repository's allowed signers, or None when it has none.

    A path set with config ``signing.allowedSigners`` must exist (a missing
    policy file must not silently turn protection off); the default
    ``<gitdir>/allowed_signers`` is optional.
    """
    p = policy_path(repo)
    if p is None:
        return None
    explicit = bool(repo.config.get("signing.allowedSigners"))
    if not p.exists() and not explicit:
        return None
    return AllowedSigners.load(p)
