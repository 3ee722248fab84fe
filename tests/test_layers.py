"""The layers of docs/design.md hold: imports go only downward, no module imports its way in a circle.

The contracts are in pyproject.toml ([tool.importlinter]); import-linter
reads every import, those inside functions and under TYPE_CHECKING too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 700


def _lint_imports() -> list[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is not installed (pip install -e '.[test]')"
    return [exe, "--no-cache", "--no-logo"]


def test_layers_import_only_downward_and_no_module_cycles():
    res = subprocess.run(_lint_imports(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 kept, 0 broken" in res.stdout, res.stdout


def test_a_layer_crossing_is_caught(tmp_path: Path):
    """The check is not vacuous: an upward import added to a copy of the package breaks the contract."""
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "mfgit", copy / "mfgit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    store = copy / "mfgit" / "store" / "objectstore.py"
    store.write_text(store.read_text() + "\n\ndef _upward():\n    from mfgit.api import merging  # noqa: F401\n")
    res = subprocess.run(_lint_imports(), cwd=copy, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(copy), "PATH": str(Path(sys.executable).parent)})
    assert res.returncode != 0, res.stdout
    assert "mfgit.store.objectstore -> mfgit.api.merging" in res.stdout, res.stdout


def test_every_module_is_of_a_size_one_can_hold_in_mind():
    big = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / "mfgit").rglob("*.py"))
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"
