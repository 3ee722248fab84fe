"""Fault injection for the crash-safety tests: SIGKILL ourselves at a named point.

Enabled only by the MFGIT_CRASH_AT environment variable: the tests kill a
real `mfgit` process at each named point of commit, push, fetch, gc and
merge, then check that the repository is sound. The points are listed in
docs/design.md ("Crash points").
"""

from __future__ import annotations

import os


def crashpoint(name: str) -> None:
    if os.environ.get("MFGIT_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
