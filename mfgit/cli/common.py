"""What every command module shares: opening the repository, printing JSON, import paths."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

def quiet_blas() -> None:
    """For commands that move tensor bytes and do no linear algebra.

    numpy (the byte planes of stored tensors) loads OpenBLAS, whose worker
    threads busy-wait after start-up: on a small machine they take a core
    from hashing and compression, which these commands never give back.
    Set before numpy loads, so it lasts for the process; a user's own
    setting wins. Not for merge, search, eval or demo, which do use BLAS.
    Also for pages: its linear algebra is many QRs of thin factors (n × r),
    for which the threads cost more than they give (45 commits on 2 cores:
    13.5 s with them, 3.4 s without).
    """
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def open_repo(ctx: click.Context):
    from mfgit.api.repository import Repository

    return Repository.open(ctx.obj["cwd"])


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def import_path(ctx: click.Context) -> None:
    """Score modules are imported like `python -m` does: from -C PATH, the current directory, then sys.path."""
    for here in (os.getcwd(), str(Path(ctx.obj["cwd"]).absolute())):
        if here not in sys.path:
            sys.path.insert(0, here)
