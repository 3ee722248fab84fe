"""Signing keys for a person, not a repository: `mfgit keygen` with its defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mfgit.audit.keys import keygen as make_key
from mfgit.api.config import user_config
from mfgit.repo.config import global_config_path


def default_key_path(key_type: str) -> Path:
    """Where keygen writes without a PATH: beside the user's own config file."""
    return global_config_path().parent / ("signing_key" if key_type == "ed25519" else "signing_key_ecdsa")


def keygen(path: str | os.PathLike | None = None, *, key_type: str = "ed25519", comment: str | None = None,
           force: bool = False) -> dict[str, Any]:
    """Write a new private key (mode 0600) and its public key; see mfgit.audit.keys.keygen.

    The comment defaults to the user's e-mail (config user.email, else $MFGIT_AUTHOR_EMAIL).
    """
    if comment is None:
        comment = user_config().get("user.email") or os.environ.get("MFGIT_AUTHOR_EMAIL") or ""
    return make_key(default_key_path(key_type) if path is None else path, key_type=key_type, comment=comment,
                    force=force)
