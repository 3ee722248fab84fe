"""Signatures on commits, tags and notes: making them and checking them.

A signature covers ``obj.signing_payload()`` — the canonical JSON of the
commit (or tag) without its ``signature`` field. A commit names its adapter
by id and the adapter names every tensor and file by id (SHA-256), so the
signature covers every byte of the adapter. It is stored in the object:

    {"format": "ed25519", "public_key": "<base64>", "key_id": "SHA256:<b64>", "sig": "<base64>"}

``public_key`` is the raw 32-byte ed25519 key (or the uncompressed X9.62
point for ``ecdsa-p256``, whose ``sig`` is DER, SHA-256); ``key_id`` is the
key's OpenSSH fingerprint, as ``ssh-keygen -lf KEY.pub`` prints it. Whether
a good signature is *allowed* is the policy's to say (mfgit.audit.policy).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mfgit.audit.keys import FORMATS, PublicKey, SigningKey, load_signing_key, unb64
from mfgit.errors import SigningKeyError

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository


def signing_key_path(repo: "BaseRepository") -> Path:
    """The private key that config ``signing.key`` names (relative to the work tree)."""
    value = repo.config.get("signing.key")
    if not value:
        raise SigningKeyError("(none)", "signing.key is not set")
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = (repo.worktree or repo.gitdir or Path(".")) / p
    return p


def signer(key: SigningKey) -> Callable[[Any], Any]:
    """The callable `write_commit(sign=…)` / `tag(sign=…)` take."""

    def sign(obj):
        return dataclasses.replace(obj, signature=key.signature_for(obj.signing_payload()))

    return sign


# -- checking a signature ----------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureCheck:
    status: str  # "unsigned", "good", "bad"
    reason: str
    key: PublicKey | None = None

    @property
    def key_id(self) -> str | None:
        return self.key.key_id if self.key is not None else None


def check_signature(obj) -> SignatureCheck:
    """Check the signature stored in a Commit or Tag against its own payload."""
    sig = obj.signature
    if sig is None:
        return SignatureCheck("unsigned", "not signed")
    if not isinstance(sig, dict):
        return SignatureCheck("bad", "the signature field is not an object")
    fmt = sig.get("format")
    try:
        if fmt not in FORMATS:
            raise ValueError(f"unknown signature format {fmt!r}")
        key = PublicKey.from_raw(fmt, unb64(str(sig.get("public_key", "")), "public_key"))
        raw_sig = unb64(str(sig.get("sig", "")), "sig")
    except Exception as e:  # noqa: BLE001 - any malformed field is a bad signature
        return SignatureCheck("bad", f"malformed signature: {e}")
    if sig.get("key_id") != key.key_id:
        return SignatureCheck("bad", f"key_id {sig.get('key_id')} does not match the public key ({key.key_id})", key)
    if not key.verify(raw_sig, obj.signing_payload()):
        return SignatureCheck("bad", "the signature does not verify: the object was changed after it was signed, "
                                     "or the signature is damaged", key)
    return SignatureCheck("good", "valid signature", key)


def repo_signer(repo: "BaseRepository", key: str | os.PathLike | None = None) -> Callable[[Any], Any]:
    """The sign= callable for commit / merge / tag, from `key` or config signing.key."""
    return signer(load_signing_key(key if key is not None else signing_key_path(repo)))
