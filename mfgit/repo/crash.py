"""Fault injection for the crash-safety tests: SIGKILL ourselves at a named point.

Enabled only by the MFGIT_CRASH_AT environment variable: the tests kill a
real `mfgit` process at each named point of commit, push, fetch, gc and
merge, then check that the repository is sound (docs/design.md, "Crash
points"). `POINTS` lists every point the code has and the operation whose
test drives it; tests/test_crash_points.py checks that the names passed to
`crashpoint()` in the source are exactly these.
"""

from __future__ import annotations

import os

ENV = "MFGIT_CRASH_AT"

# name -> operation. Each sits between two durable steps of its operation,
# where a crash is most likely to leave a half state if the order of the
# steps were wrong.
POINTS: dict[str, str] = {
    # commit (repo/importer.py, repo/base.py write_commit)
    "during-tensors": "commit",  # the first tensor written into the batch directory
    "after-tensors": "commit",  # every tensor written, the batch not yet renamed into place
    "after-adapter-object": "commit",  # the manifest stored, no commit object
    "after-commit-object": "commit",  # the commit object stored, the branch not moved
    "after-ref": "commit",  # the branch moved (a merge's too), nothing reported yet
    # push (remote/push.py, remote/notes.py)
    "push-after-tensors": "push",  # tensors and blobs on the remote, no adapter or commit
    "push-before-ref": "push",  # every object on the remote, its branch not moved
    "push-after-ref": "push",  # the remote branch moved, the remote-tracking ref not
    "push-notes-before-ref": "push",  # the notes objects on the remote, its notes ref not moved
    # fetch (remote/fetch.py, remote/notes.py)
    "fetch-after-tensors": "fetch",  # tensors and blobs stored, no adapter or commit
    "fetch-before-refs": "fetch",  # every object stored, no remote-tracking ref moved
    "fetch-between-refs": "fetch",  # the first remote-tracking ref moved, the others not
    "fetch-notes-before-ref": "fetch",  # the remote's notes snapshot stored, the local notes ref not moved
    # gc (repo/gc.py)
    "gc-during-delete": "gc",  # the first unreachable object deleted, the others not
    "gc-during-private-delete": "gc",  # every unreachable object and the first unnamed private copy deleted
    "gc-after-delete": "gc",  # every unreachable object and private copy deleted, temporary files not yet removed
    # merge (api/merging.py, repo/base.py write_commit)
    "merge-before-adapter": "merge",  # the merge computed, nothing stored
    "merge-after-adapter": "merge",  # the merged adapter stored, no commit object
    "merge-before-ref": "merge",  # the merge commit stored, the branch not moved
}

OPERATIONS = ("commit", "push", "fetch", "gc", "merge")


def points_of(operation: str) -> list[str]:
    """The crash points of one operation, in the order they are reached."""
    return [name for name, op in POINTS.items() if op == operation]


def crashpoint(name: str) -> None:
    if os.environ.get(ENV) == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
