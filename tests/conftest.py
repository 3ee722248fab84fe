"""Shared fixtures: the real `mfgit` command in an isolated environment,
initialised repositories, and real PEFT adapter directories.

- `cli`         runs the installed `mfgit` console script as a subprocess
                (`cli("log", "--json", cwd=repo_dir)`), with a private
                global config and an author identity from the environment.
- `repo_dir`    an initialised repository in tmp_path; in-process API calls
                see the same isolated environment as `cli` (`mfgit_env`).
- `adapter_dir` factory: `adapter_dir("name", seed=1, dtype=torch.bfloat16)`
                gives a fresh copy of a real PEFT adapter (tests/adapters.py);
                `adapter_dir("m", kind="minilm")` one for all-MiniLM-L6-v2.
                Each distinct adapter is built once per session and copied
                (copies keep the files' mtimes).
"""

from __future__ import annotations

import contextlib

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# One intra-op thread per process: the suite runs as several pytest workers,
# each starting `mfgit` subprocesses, on a few cores. Each of them spinning up
# a thread per core oversubscribes the machine (OpenMP threads busy-wait), and
# a sub-second linear-algebra test then takes a minute. Merges give the same
# bits whatever the thread count (mfgit.merge.engine.module_parallelism), and
# subprocesses inherit the setting through `isolated_env`. An explicit
# OMP_NUM_THREADS / MKL_NUM_THREADS in the environment wins.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
if "torch" in sys.modules:  # imported by a plugin before this file: its pool is already sized
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

MFGIT = str(Path(sys.executable).with_name("mfgit"))
AUTHOR_NAME = "Test Author"
AUTHOR_EMAIL = "author@example.org"


def isolated_env(home: Path, **extra: str | None) -> dict[str, str]:
    """os.environ without MFGIT_* settings, plus a private global config.

    Keyword arguments add variables; a value of None removes one.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFGIT_")}
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        MFGIT_CONFIG_GLOBAL=str(home / "mfgit-global.cfg"),
        MFGIT_AUTHOR_NAME=AUTHOR_NAME,
        MFGIT_AUTHOR_EMAIL=AUTHOR_EMAIL,
        HF_HUB_OFFLINE="1",
        GIT_CONFIG_NOSYSTEM="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


class Cli:
    """The real `mfgit` command, run as a subprocess.

    ``cli(*args)`` returns the CompletedProcess (text mode);
    ``cli.ok(*args)`` asserts exit 0; ``cli.json(*args)`` parses the whole
    stdout as one JSON document; ``cli.fails(*args)`` asserts a non-zero
    exit with exactly one line on stderr and no traceback, and returns it.
    """

    def __init__(self, home: Path, cwd: Path, env: dict[str, str] | None = None):
        self.home = home
        self.cwd = Path(cwd)
        self.env = env if env is not None else isolated_env(home)

    def at(self, cwd: Path) -> "Cli":
        return Cli(self.home, cwd, self.env)

    def with_env(self, **extra: str | None) -> "Cli":
        env = dict(self.env)
        for k, v in extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return Cli(self.home, self.cwd, env)

    def __call__(self, *args: Any, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [MFGIT, *map(str, args)],
            cwd=str(cwd or self.cwd),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def popen(self, *args: Any, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(
            [MFGIT, *map(str, args)],
            cwd=str(cwd or self.cwd),
            env=env or self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ok(self, *args: Any, **kw: Any) -> subprocess.CompletedProcess:
        res = self(*args, **kw)
        assert res.returncode == 0, f"mfgit {' '.join(map(str, args))} exited {res.returncode}:\n{res.stderr}{res.stdout}"
        return res

    def json(self, *args: Any, **kw: Any) -> Any:
        res = self.ok(*args, **kw)
        return json.loads(res.stdout)

    def fails(self, *args: Any, code: int | None = None, **kw: Any) -> str:
        res = self(*args, **kw)
        assert res.returncode != 0, f"mfgit {' '.join(map(str, args))} succeeded:\n{res.stdout}"
        if code is not None:
            assert res.returncode == code, f"exit {res.returncode}, expected {code}: {res.stderr}"
        return one_line_error(res.stderr)


def one_line_error(stderr: str) -> str:
    """The single `mfgit: ...` line a user error must produce (no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("mfgit: "), lines[0]
    return lines[0]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home", tmp_path)


@contextlib.contextmanager
def in_process_env(env: dict[str, str]):
    """In-process API calls see the same identity, credentials and endpoint as `cli`.

    Its own MonkeyPatch, so a test's `monkeypatch.undo()` does not drop it."""
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith(("MFGIT_", "AWS_"))]:
            mp.delenv(k)
        for k, v in env.items():
            if k.startswith(("MFGIT_", "AWS_")):
                mp.setenv(k, v)
        yield


@pytest.fixture
def mfgit_env(cli: Cli):
    """The same isolated environment for in-process API calls as for `cli`.

    Its own MonkeyPatch, so a test's `monkeypatch.undo()` does not drop it.
    """
    with in_process_env(cli.env):
        yield cli.env


@pytest.fixture
def repo_dir(cli: Cli, tmp_path: Path, mfgit_env: dict[str, str]) -> Path:
    """An initialised repository at tmp_path/"repo" (in-process calls see `cli`'s environment)."""
    path = tmp_path / "repo"
    cli.ok("init", path)
    return path


# --- real PEFT adapters, built once per session --------------------------------

_BUILT: dict[str, Path] = {}


def _cache_key(kind: str, kw: dict[str, Any]) -> str:
    return kind + ":" + json.dumps({k: str(v) for k, v in sorted(kw.items())}, sort_keys=True)


def build_adapter(root: Path, kind: str = "llama", **kw: Any) -> Path:
    """Build (once per session) and return the path of a real adapter directory."""
    key = _cache_key(kind, kw)
    if key not in _BUILT:
        from tests.adapters import make_lora_adapter, make_minilm_adapter

        out = root / f"built-{len(_BUILT)}"
        if kind == "minilm":
            make_minilm_adapter(out, **kw)
        else:
            make_lora_adapter(out, **kw)
        # Give the files an age: a stat cache rightly distrusts files
        # written in the same instant as its own entry (racy-git rule).
        for f in out.iterdir():
            os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns - 5_000_000_000))
        _BUILT[key] = out
    return _BUILT[key]


@pytest.fixture(scope="session")
def adapter_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture
def adapter_dir(adapter_store: Path, tmp_path: Path):
    """Factory: a fresh copy of a real PEFT adapter directory in tmp_path."""

    def make(name: str = "adapter", *, kind: str = "llama", **kw: Any) -> Path:
        src = build_adapter(adapter_store, kind, **kw)
        dst = tmp_path / "adapters" / name
        assert not dst.exists(), f"adapter {name} already made in this test"
        shutil.copytree(src, dst)
        return dst

    return make
