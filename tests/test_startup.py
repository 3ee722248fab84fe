"""Commands that do no tensor math never import torch.

`import torch` costs seconds before any work; only merge (and what loads
models: eval, search, demo, pickle checkpoints) needs it. Each command here
runs in a fresh interpreter, the real CLI entry point, and reports what it
imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_HARNESS = """
import json, sys
from mfgit.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code or 0
else:
    code = 0
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "peft": "peft" in sys.modules}), file=sys.stderr)
"""


def _run(cli, cwd, *args) -> dict:
    res = subprocess.run([sys.executable, "-c", _HARNESS, *map(str, args)], cwd=str(cwd), env=cli.env,
                         capture_output=True, text=True, timeout=120)
    report = json.loads(res.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, res.stderr
    return report


@pytest.fixture
def hub(cli, repo_dir, adapter_dir, tmp_path):
    cli.ok("init", "--bare", tmp_path / "hub.mfgit")
    cli.ok("remote", "add", "hub", tmp_path / "hub.mfgit", cwd=repo_dir)
    cli.ok("commit", adapter_dir("a", seed=1), "-m", "one", cwd=repo_dir)
    return tmp_path / "hub.mfgit"


def test_reading_and_moving_commands_do_not_import_torch(cli, repo_dir, adapter_dir, hub, tmp_path):
    steps = [
        ("commit", adapter_dir("b", seed=2), "-m", "two"),
        ("log",), ("log", "--graph"), ("show", "HEAD"), ("status",), ("branch",), ("tag", "v1"),
        ("checkout", "HEAD", "--to", tmp_path / "out"), ("diff", "HEAD~1", "HEAD"), ("blame",), ("lineage",),
        ("fsck",), ("verify", "HEAD"), ("push", "hub", "main"), ("fetch", "hub"), ("notes", "list"),
        ("gc", "--dry-run"), ("clone", hub, tmp_path / "clone"),
        ("--help",), ("--version",), ("merge", "--help"),
    ]
    loaded = {" ".join(map(str, s[:2] if s[0] == "merge" else s[:1])): _run(cli, repo_dir, *s) for s in steps}
    assert not [name for name, r in loaded.items() if r["torch"] or r["peft"]], loaded
