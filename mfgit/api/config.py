"""Settings of a person rather than a repository (``mfgit config --global``)."""

from __future__ import annotations

import os
from pathlib import Path

from mfgit.repo.config import Config


def user_config() -> Config:
    """The user's own settings (``$MFGIT_CONFIG_GLOBAL`` or ``~/.config/mfgit/config``), without a repository."""
    return Config(Path(os.devnull))
