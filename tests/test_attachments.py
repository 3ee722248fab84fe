"""Commit attachments end to end, through the real `mfgit` command, on real
PEFT adapters: named files committed with an adapter, public ones stored and
moved as blobs, private ones kept at their site only (docs/design.md,
"Attachments")."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mfgit.api.repository import Repository


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


TASK = b'{"task": "chest x-ray", "classes": ["normal", "pneumonia"]}'
SECRET = b"patient-level distilled rows: " + bytes(range(256)) * 8


def test_attachments_round_trip_through_commit_list_extract_and_checkout(cli, repo_dir, adapter_dir, tmp_path):
    adapter = adapter_dir("a")
    task = write(tmp_path / "in" / "task.json", TASK)
    secret = write(tmp_path / "in" / "rows.bin", SECRET)
    made = cli.json("commit", adapter, "-m", "with files", "--json", "--attach", f"task.json={task}",
                    "--attach-private", f"distilled/rows.bin={secret}", cwd=repo_dir)
    assert made["attachments"] == [
        {"name": "distilled/rows.bin", "size": len(SECRET), "digest": sha(SECRET), "private": True},
        {"name": "task.json", "size": len(TASK), "digest": sha(TASK), "private": False,
         "id": hashlib.sha256(b"blob " + TASK).hexdigest()},
    ]
    listed = cli.json("attachments", "--json", cwd=repo_dir)
    assert listed["commit"] == made["id"]
    assert [(a["name"], a["present"]) for a in listed["attachments"]] == [("distilled/rows.bin", True),
                                                                           ("task.json", True)]
    assert cli.ok("attachments", "HEAD", "task.json", cwd=repo_dir).stdout.encode() == TASK
    cli.ok("attachments", "HEAD", "distilled/rows.bin", "-o", tmp_path / "rows.out", cwd=repo_dir)
    assert (tmp_path / "rows.out").read_bytes() == SECRET
    # The private bytes are in this repository only, outside the object store.
    assert (repo_dir / ".mfgit" / "private" / sha(SECRET)).read_bytes() == SECRET
    repo = Repository.open(repo_dir)
    assert repo.read_attachment("HEAD", "task.json") == TASK
    assert all(repo.store.get(o)[1] != SECRET for o in repo.store.iter_ids())

    out = tmp_path / "out"
    cli.ok("checkout", "HEAD", "--to", out, "--with-attachments", cwd=repo_dir)
    assert (out / "attachments" / "task.json").read_bytes() == TASK
    assert (out / "attachments" / "distilled" / "rows.bin").read_bytes() == SECRET
    assert (out / "adapter_model.safetensors").is_file()
    plain = tmp_path / "plain"
    cli.ok("checkout", "HEAD", "--to", plain, cwd=repo_dir)
    assert not (plain / "attachments").exists()

    shown = cli.json("show", "--json", cwd=repo_dir)
    assert shown["commit"]["attachments"] == made["attachments"]
    text = cli.ok("show", cwd=repo_dir).stdout
    assert "Attachments: 2 (1 private)" in text and "task.json" in text and "distilled/rows.bin" in text
    assert "Attachments: 2 (1 private)" in cli.ok("log", cwd=repo_dir).stdout
    assert cli.json("fsck", "--json", cwd=repo_dir)["ok"]
    assert json.loads(cli.ok("verify", "--json", cwd=repo_dir).stdout)["ok"]
