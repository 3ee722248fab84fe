"""Safety: crashes, corruption, hostile input, and garbage collection.

- A real `mfgit commit` killed with SIGKILL (at named points and at random
  instants) leaves a sound repository, the user's files untouched, and a
  re-run that succeeds (invariants 1, 4, 6).
- One flipped byte in any stored object is reported, naming the object and
  both digests, and checkout writes nothing (invariant 2).
- Malformed safetensors, pickles, bad names and paths are refused with one
  line (invariant 5).
- gc deletes only what nothing reaches, and fsck reports each kind of damage.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from mfgit.api.repository import Repository
from mfgit.errors import InvalidObject, UnsafePath
from mfgit.objects import Adapter, Commit
from mfgit.objects.canonical import canonical_json
from mfgit.repo.checkout import write_adapter_dir
from mfgit.repo.crash import points_of
from tests.conftest import AUTHOR_EMAIL, AUTHOR_NAME, Cli, build_adapter

# --- helpers ---------------------------------------------------------------------------------


def dir_digest(path: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mode of every file under `path` (what 'untouched' means)."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(path))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
    return out


def tree_listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def branch_tip(repo_dir: Path, branch: str = "main") -> str | None:
    p = repo_dir / ".mfgit" / "refs" / "heads" / branch
    return p.read_text().strip() if p.exists() else None


def object_path(repo_dir: Path, oid: str) -> Path:
    return repo_dir / ".mfgit" / "objects" / oid[:2] / oid[2:]


def object_files(repo_dir: Path) -> list[Path]:
    return sorted(p for p in (repo_dir / ".mfgit" / "objects").glob("??/*") if not p.name.startswith(".tmp-"))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


def fsck_json(cli: Cli, repo_dir: Path, *extra: str) -> tuple[int, dict]:
    res = cli("fsck", "--json", *extra, cwd=repo_dir)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, json.loads(res.stdout)


def lora_bf16_adapter(out: Path, names: list[str], shapes: tuple[tuple[int, int], tuple[int, int]], config: dict,
                      *, seed: int = 0, readme: str | None = None) -> Path:
    """A bf16 PEFT LoRA adapter directory: modules `names`, lora_A / lora_B of `shapes`, weights N(0, 0.02)."""
    out.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in names:
        tensors[f"{name}.lora_A.weight"] = (torch.randn(*shapes[0], generator=gen) * 0.02).to(torch.bfloat16)
        tensors[f"{name}.lora_B.weight"] = (torch.randn(*shapes[1], generator=gen) * 0.02).to(torch.bfloat16)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    if readme is not None:
        (out / "README.md").write_text(readme)
    for f in out.iterdir():  # old enough for the stat cache
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns - 5_000_000_000))
    return out


def make_big_adapter(out: Path, *, modules: int = 40, rank: int = 64, dim: int = 4096, seed: int = 0) -> Path:
    """A ~42 MB bf16 PEFT LoRA adapter directory (40 modules of rank 64)."""
    names = [f"base_model.model.model.layers.{i // 2}.self_attn.{'qv'[i % 2]}_proj" for i in range(modules)]
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj", "v_proj"],
              "base_model_name_or_path": "big-test-model", "task_type": "CAUSAL_LM"}
    return lora_bf16_adapter(out, names, ((rank, dim), (dim, rank)), config, seed=seed, readme="# big adapter\n")


def make_many_tensor_adapter(out: Path, modules: int) -> Path:
    """A PEFT LoRA adapter of `modules` modules of two tiny bf16 tensors each (one object file per tensor)."""
    names = [f"base_model.model.model.layers.{i // 100}.experts.{i % 100}.proj" for i in range(modules)]
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["proj"], "base_model_name_or_path": "many"}
    return lora_bf16_adapter(out, names, ((2, 32), (32, 2)), config, seed=5)


def reference_commit(root: Path, path: Path) -> SimpleNamespace:
    """The adapter at `path`, the id a clean commit gives it, and how long that commit takes."""
    cli = Cli(root / "home", root)
    cli.ok("init", root / "reference")
    t0 = time.monotonic()
    ref = cli.json("commit", path, "-m", "reference", "--json", cwd=root / "reference")
    return SimpleNamespace(path=path, adapter=ref["adapter"], seconds=time.monotonic() - t0)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """The big adapter, the id a clean commit gives it, and how long that takes."""
    root = tmp_path_factory.mktemp("big")
    return reference_commit(root, make_big_adapter(root / "big-adapter"))


def check_sound_after_kill(cli: Cli, repo_dir: Path, src: Path, before: dict, old: str | None,
                           expected_adapter: str | None) -> str:
    """The checks every interrupted commit must pass; returns the tip after a re-run."""
    # The user's files are untouched (invariant 6).
    assert dir_digest(src) == before
    # The repository is sound: leftovers of interrupted writes and dangling
    # objects are allowed, damage is not.
    code, report = fsck_json(cli, repo_dir)
    assert code == 0 and report["ok"] is True, report
    # The branch is at the old commit or at a complete new one (invariant 4).
    tip = branch_tip(repo_dir)
    repo = Repository.open(repo_dir)
    if tip != old:
        c = repo.read_commit(tip)
        assert list(c.parents) == ([old] if old else [])
        if expected_adapter:
            assert c.adapter == expected_adapter
    # A lock left by the killed process blocks writers until removed (git's rule).
    if report["stale_locks"]:
        line = cli.fails("commit", src, "-m", "blocked", "--allow-empty", cwd=repo_dir, code=7)
        assert ".lock" in line and "remove the .lock file" in line
        for lk in report["stale_locks"]:
            os.unlink(lk)
    # Re-running the commit succeeds and stores a whole adapter.
    again = cli.json("commit", src, "-m", "re-run", "--allow-empty", "--json", cwd=repo_dir)
    assert again["parents"] == ([tip] if tip else [])
    if expected_adapter:
        assert again["adapter"] == expected_adapter
    code, report = fsck_json(cli, repo_dir, "--read-data")
    assert code == 0 and report["ok"] is True and report["missing"] == [] and report["corrupt"] == []
    assert dir_digest(src) == before
    return again["id"]


# --- crashes ---------------------------------------------------------------------------------------

# Generated from the table of every crash point (mfgit/repo/crash.py); the
# other operations' points are tested in tests/test_crash_points.py.
CRASH_POINTS = points_of("commit")


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_each_point_of_a_commit_leaves_the_repository_consistent(cli, repo_dir, adapter_dir, point, tmp_path):
    first = adapter_dir("first", seed=1)
    cli.ok("commit", first, "-m", "first", cwd=repo_dir)
    old = branch_tip(repo_dir)
    src = adapter_dir("src", seed=2)
    before = dir_digest(src)
    res = cli.with_env(MFGIT_CRASH_AT=point)("commit", src, "-m", "crashing", cwd=repo_dir)
    assert res.returncode == -signal.SIGKILL, (res.returncode, res.stderr)
    tip = branch_tip(repo_dir)
    if point == "after-ref":
        assert tip != old and Repository.open(repo_dir).read_commit(tip).parents == (old,)
    else:
        assert tip == old
    code, report = fsck_json(cli, repo_dir)
    if point in ("during-tensors", "after-tensors"):
        # Tensors written to temporary names never became objects.
        assert report["temporary_files"]
    new_tip = check_sound_after_kill(cli, repo_dir, src, before, old, None)
    # The committed adapter is the source, bit for bit.
    out = tmp_path / "out"
    cli.ok("checkout", new_tip, "--to", out, cwd=repo_dir)
    a, b = load_file(str(src / "adapter_model.safetensors")), load_file(str(out / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    # gc --prune=now clears the leftovers and keeps everything reachable.
    cli.ok("gc", "--prune=now", cwd=repo_dir)
    code, report = fsck_json(cli, repo_dir, "--read-data")
    assert code == 0 and report["temporary_files"] == [] and report["ok"] is True


@pytest.mark.parametrize("seed", range(5))
def test_sigkill_at_a_random_instant_of_a_big_commit_leaves_the_repository_consistent(big, cli, repo_dir, adapter_dir, seed):
    small = adapter_dir("small", seed=1)
    cli.ok("commit", small, "-m", "before", cwd=repo_dir)
    old = branch_tip(repo_dir)
    before = dir_digest(big.path)
    # Spread the kills over the whole commit, from process start to the ref update.
    delay = random.Random(seed).uniform(0.0, big.seconds) if seed else 0.6 * big.seconds
    proc = cli.popen("commit", big.path, "-m", "big", cwd=repo_dir)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), err
    check_sound_after_kill(cli, repo_dir, big.path, before, old, big.adapter)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """An adapter of 5,000 tensors, the id a clean commit gives it, and how long that takes."""
    root = tmp_path_factory.mktemp("many")
    return reference_commit(root, make_many_tensor_adapter(root / "many-adapter", modules=2500))


@pytest.mark.parametrize("moment", ["during-tensors", "after-tensors", 0.3, 0.6, 0.9])
def test_sigkill_of_a_commit_of_many_tensors_leaves_nothing_fsck_or_the_next_commit_trips_over(
        many, cli, repo_dir, adapter_dir, moment):
    # The bug: a commit of 200,000 tensors killed midway left a temporary
    # file per tensor written so far. Now a batch writes into one temporary
    # directory: whatever the moment of the kill, at most that directory
    # (and a half-written manifest or commit) is left, fsck finds no damage,
    # the next commit succeeds, and gc removes the leftovers.
    cli.ok("commit", adapter_dir("small", seed=1), "-m", "before", cwd=repo_dir)
    old = branch_tip(repo_dir)
    before = dir_digest(many.path)
    if isinstance(moment, str):
        res = cli.with_env(MFGIT_CRASH_AT=moment)("commit", many.path, "-m", "many", cwd=repo_dir)
        assert res.returncode == -signal.SIGKILL, res.stderr
    else:
        proc = cli.popen("commit", many.path, "-m", "many", cwd=repo_dir)
        time.sleep(moment * many.seconds)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), err
    code, report = fsck_json(cli, repo_dir)
    assert code == 0 and report["ok"], report
    assert len(report["temporary_files"]) <= 2, report["temporary_files"][:5]
    check_sound_after_kill(cli, repo_dir, many.path, before, old, many.adapter)
    cli.ok("gc", "--prune=now", cwd=repo_dir)
    code, report = fsck_json(cli, repo_dir)
    assert code == 0 and report["ok"] and report["temporary_files"] == []


# --- corruption ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_commit_repo(tmp_path_factory):
    """A repository with one commit of a real adapter; tests damage copies of it."""
    root = tmp_path_factory.mktemp("onecommit")
    src = build_adapter(root, seed=91)
    cli = Cli(root / "home", root)
    cli.ok("init", root / "repo")
    info = cli.json("commit", src, "-m", "pristine", "--json", cwd=root / "repo")
    repo = Repository.open(root / "repo")
    adapter = repo.read_adapter(info["adapter"])
    ids = {
        "commit": info["id"],
        "adapter": info["adapter"],
        "tensor": adapter.tensors[sorted(adapter.tensors)[0]]["id"],
        "blob": repo.read_commit(info["id"]).attachments[0]["id"],  # the model card PEFT wrote
    }
    return SimpleNamespace(path=root / "repo", ids=ids, src=src)


@pytest.fixture
def damaged(one_commit_repo, tmp_path):
    """A fresh copy of `one_commit_repo` for this test to damage."""
    dst = tmp_path / "repo"
    shutil.copytree(one_commit_repo.path, dst)
    return SimpleNamespace(path=dst, ids=one_commit_repo.ids, src=one_commit_repo.src)


@pytest.mark.parametrize("kind", ["tensor", "adapter", "commit", "blob"])
@pytest.mark.parametrize("where", ["header", "payload"])
def test_a_flipped_byte_in_any_object_is_detected_on_the_next_read(cli, damaged, tmp_path, kind, where):
    oid = damaged.ids[kind]
    path = object_path(damaged.path, oid)
    flip_byte(path, 5 if where == "header" else -1)  # the kind byte, or the last payload byte

    # fsck (with and without --read-data) names the object and both digests.
    for extra in ([], ["--read-data"]):
        code, report = fsck_json(cli, damaged.path, *extra)
        assert code == 5 and report["ok"] is False
        (entry,) = [c for c in report["corrupt"] if c["id"] == oid]
        assert entry["expected"] and entry["actual"] and entry["expected"] != entry["actual"]
    text = cli("fsck", "--read-data", cwd=damaged.path)
    assert text.returncode == 5
    assert f"corrupt object {oid}: expected {entry['algorithm']} {entry['expected']}, got {entry['actual']}" in text.stdout

    def assert_names_the_damage(line: str) -> None:
        assert oid in line and entry["expected"] in line and entry["actual"] in line and "fsck" in line

    # checkout refuses and writes no file into the (empty) target.
    out = tmp_path / "out"
    out.mkdir()
    assert_names_the_damage(cli.fails("checkout", "HEAD", "--to", out, cwd=damaged.path, code=5))
    assert list(out.iterdir()) == []
    # ...nor creates a target that did not exist.
    assert_names_the_damage(cli.fails("checkout", "HEAD", "--to", tmp_path / "new", cwd=damaged.path, code=5))
    assert not (tmp_path / "new").exists()

    # show reads the commit and the adapter manifest (not the tensors).
    if kind in ("commit", "adapter"):
        assert_names_the_damage(cli.fails("show", cwd=damaged.path, code=5))
    else:
        cli.ok("show", cwd=damaged.path)
    if kind == "commit":
        assert_names_the_damage(cli.fails("log", cwd=damaged.path, code=5))
    # The source directory is never touched by any of this.
    assert (damaged.src / "adapter_model.safetensors").exists()


def test_a_truncated_object_is_detected(cli, damaged, tmp_path):
    oid = damaged.ids["tensor"]
    path = object_path(damaged.path, oid)
    data = path.read_bytes()
    os.chmod(path, 0o644)
    path.write_bytes(data[: len(data) // 2])
    line = cli.fails("checkout", "HEAD", "--to", tmp_path / "out", cwd=damaged.path, code=5)
    assert oid in line and "corrupt" in line
    assert not (tmp_path / "out").exists()


# --- hostile input --------------------------------------------------------------------------------


def _raw(header: bytes, data: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def _doc(doc: dict, data: bytes = b"") -> bytes:
    return _raw(json.dumps(doc).encode(), data)


_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
MALFORMED = {
    "header-past-end": (_raw(b'{"a":1}', length=1000), "header-past-end"),
    "oversized-header": (_raw(b"{}", length=200_000_000), "header-too-large"),
    "invalid-json": (_raw(b'{"' + _A.encode() + b'": {dtype: F32}}'), "header-invalid-json"),
    "overlapping-offsets": (_doc({_A: {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]},
                                  _B: {"dtype": "F32", "shape": [2, 1], "data_offsets": [4, 12]}}, bytes(12)), "overlap"),
    "trailing-bytes": (_doc({_A: {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]},
                             _B: {"dtype": "F32", "shape": [1, 1], "data_offsets": [4, 8]}}, bytes(8) + b"junk"), "trailing-bytes"),
    "shape-overflow": (_doc({_A: {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 4]}}, bytes(4)), "size-overflow"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_safetensors_is_refused_and_the_files_are_untouched(cli, repo_dir, adapter_dir, case):
    blob, rule = MALFORMED[case]
    src = adapter_dir("bad", seed=3)
    (src / "adapter_model.safetensors").write_bytes(blob)
    before = dir_digest(src)
    line = cli.fails("commit", src, "-m", "bad", cwd=repo_dir, code=4)
    assert "invalid safetensors file" in line and f"({rule})" in line and "adapter_model.safetensors" in line
    assert dir_digest(src) == before
    assert branch_tip(repo_dir) is None
    assert object_files(repo_dir) == []


def _pickle_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    state = load_file(str(dst / "adapter_model.safetensors"))
    (dst / "adapter_model.safetensors").unlink()
    torch.save(state, dst / "adapter_model.bin")
    return dst


def test_pickle_checkpoints_are_refused_unless_allowed(cli, repo_dir, adapter_dir, tmp_path):
    src = adapter_dir("src", seed=4)
    pick = _pickle_dir(src, tmp_path / "pickled")
    before = dir_digest(pick)
    line = cli.fails("commit", pick, "-m", "pickle", cwd=repo_dir, code=4)
    assert "adapter_model.bin is a pickle checkpoint, which can run code when loaded" in line
    assert "--allow-pickle" in line and "safetensors" in line
    assert branch_tip(repo_dir) is None

    c = cli.json("commit", pick, "-m", "pickle", "--allow-pickle", "--json", cwd=repo_dir)
    assert c["provenance"]["source"]["format"] == "pickle"
    assert dir_digest(pick) == before
    out = tmp_path / "out"
    cli.ok("checkout", "HEAD", "--to", out, cwd=repo_dir)
    assert not (out / "adapter_model.bin").exists()
    got, want = load_file(str(out / "adapter_model.safetensors")), load_file(str(src / "adapter_model.safetensors"))
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


class _Evil:
    """A pickle payload that writes a file when unpickled."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').write('pwned')",))


def test_a_malicious_pickle_is_refused_even_with_allow_pickle(cli, repo_dir, adapter_dir, tmp_path):
    src = adapter_dir("src", seed=5)
    evil = _pickle_dir(src, tmp_path / "evil")
    state = torch.load(evil / "adapter_model.bin", weights_only=True)
    marker = tmp_path / "pwned.txt"
    state["payload"] = _Evil(str(marker))
    torch.save(state, evil / "adapter_model.bin")
    # The payload is real: an unrestricted load runs it.
    probe = tmp_path / "probe.txt"
    torch.save(dict(state, payload=_Evil(str(probe))), tmp_path / "probe.bin")
    torch.load(tmp_path / "probe.bin", weights_only=False)
    assert probe.read_text() == "pwned"

    before = dir_digest(evil)
    line = cli.fails("commit", evil, "-m", "evil", "--allow-pickle", cwd=repo_dir, code=4)
    assert "refused by the restricted loader" in line
    assert not marker.exists()
    assert dir_digest(evil) == before
    assert branch_tip(repo_dir) is None


BAD_CLI_NAMES = ["a..b", "x.lock", "bad name", "-x", "a//b", "trail/", "dot.", "@", "a@{1}", "a~1", "a:b", "../x", "a\\b"]


@pytest.mark.parametrize("name", BAD_CLI_NAMES)
def test_invalid_branch_and_tag_names_are_refused(cli, damaged, name):
    repo_dir = damaged.path
    commands = [["branch", "--", name], ["tag", "--", name]]
    if name in ("a..b", "-x", "bad name"):
        commands += [["switch", "-c", "--", name], ["switch", "--orphan", "--", name], ["tag", "-m", "msg", "--", name]]
    for args in commands:
        line = cli.fails(*args, cwd=repo_dir, code=4)
        assert "is not a valid ref name" in line and "sites/hospital-a" in line, args
    assert sorted(p.name for p in (repo_dir / ".mfgit" / "refs" / "heads").iterdir()) == ["main"]
    assert not any((repo_dir / ".mfgit" / "refs").rglob("*.lock"))
    assert cli.json("status", "--json", cwd=repo_dir)["branch"] == "main"


def test_checkout_refuses_a_non_empty_directory_without_force(cli, repo_dir, adapter_dir, tmp_path):
    src = adapter_dir("a", seed=7)
    cli.ok("commit", src, "-m", "one", cwd=repo_dir)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "adapter_config.json").write_text("{}")
    before = dir_digest(out)
    line = cli.fails("checkout", "HEAD", "--to", out, cwd=repo_dir, code=4)
    assert "exists and is not empty" in line and "--force" in line
    assert dir_digest(out) == before
    line = cli.fails("checkout", "HEAD", "--to", out / "notes.txt", cwd=repo_dir, code=4)
    cli.ok("checkout", "HEAD", "--to", out, "--force", cwd=repo_dir)
    assert (out / "notes.txt").read_text() == "mine"  # not an adapter file: left alone
    got, want = json.loads((out / "adapter_config.json").read_text()), json.loads((src / "adapter_config.json").read_text())
    assert sorted(got.pop("target_modules")) == sorted(want.pop("target_modules")) and got == want
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "notes.txt"]


@pytest.mark.parametrize("evil", ["../evil", "../../evil", "/tmp/mfgit-evil-abs", "sub/evil", ".hidden", "..", "a\\b",
                                  "adapter_model.safetensors", "ADAPTER_CONFIG.JSON"])
def test_checkout_never_writes_outside_its_target_nor_over_the_adapter_files(cli, repo_dir, adapter_dir, tmp_path,
                                                                             evil):
    # A crafted manifest naming such a file is refused when it is read (the
    # object schema), before checkout could write anything.
    cli.ok("commit", adapter_dir("a", seed=8), "-m", "one", cwd=repo_dir)
    repo = Repository.open(repo_dir)
    good = repo.read_adapter(repo.read_commit(repo.head()).adapter)
    blob = repo.store.put("blob", b"malicious content\n")
    bad = {**good.to_dict(), "files": {"README.md": blob, evil: blob}}
    aid = repo.store.put("adapter", canonical_json(bad))
    commit = Commit(adapter=aid, parents=(repo.head(),), author={"name": AUTHOR_NAME, "email": AUTHOR_EMAIL},
                    site=None, timestamp="2030-01-01T00:00:00.000000Z", message="evil", provenance={"kind": "import"})
    repo.refs.update("refs/heads/evil", repo.put_commit(commit), None)
    listing = tree_listing(tmp_path)
    for target in (tmp_path / "out" / "deeper", tmp_path / "empty"):
        if target.name == "empty":
            target.mkdir()
            listing = tree_listing(tmp_path)
        line = cli.fails("checkout", "evil", "--to", target, cwd=repo_dir, code=5)
        assert f"object {aid} is malformed" in line and repr(evil) in line
        assert tree_listing(tmp_path) == listing  # nothing written anywhere, not even the target
    assert not Path("/tmp/mfgit-evil-abs").exists()
    with pytest.raises(InvalidObject):  # and no mfgit code can write such a manifest
        repo.put_adapter(Adapter.from_dict(bad))


def test_checkout_refuses_an_unsafe_file_name_of_an_adapter_built_in_memory(cli, repo_dir, adapter_dir, tmp_path):
    cli.ok("commit", adapter_dir("a", seed=8), "-m", "one", cwd=repo_dir)
    repo = Repository.open(repo_dir)
    good = repo.read_adapter(repo.read_commit(repo.head()).adapter)
    bad = Adapter.from_dict({**good.to_dict(), "files": {"../evil": repo.store.put("blob", b"card\n")}})
    with pytest.raises(UnsafePath):
        write_adapter_dir(repo, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


# --- repository-level refusals -----------------------------------------------------------------------


def test_unknown_repository_format_is_refused(cli, repo_dir):
    cfg = repo_dir / ".mfgit" / "config"
    text = cfg.read_text()
    cfg.write_text(text.replace("formatversion = 2", "formatversion = 3"))
    line = cli.fails("log", cwd=repo_dir, code=3)
    assert "object format 'sha256' version '3'" in line and "upgrade mfgit" in line
    cfg.write_text(text.replace("objectformat = sha256", "objectformat = sha1"))
    line = cli.fails("status", cwd=repo_dir, code=3)
    assert "'sha1'" in line


def test_not_a_repository_is_one_line(cli, tmp_path):
    (tmp_path / "plain").mkdir()
    for args in (["log"], ["status"], ["commit", "x", "-m", "m"], ["fsck"]):
        line = cli.fails(*args, cwd=tmp_path / "plain", code=3)
        assert "not an mfgit repository" in line and "mfgit init" in line


def test_commit_of_a_missing_or_non_adapter_directory_is_one_line(cli, repo_dir, tmp_path):
    assert "no such file or directory" in cli.fails("commit", tmp_path / "nope", "-m", "m", cwd=repo_dir, code=4)
    (tmp_path / "empty").mkdir()
    assert "no adapter_config.json" in cli.fails("commit", tmp_path / "empty", "-m", "m", cwd=repo_dir, code=4)


# --- gc and fsck -----------------------------------------------------------------------------------


def _store_orphan_adapter(repo_dir: Path, seed: int) -> tuple[str, list[str]]:
    """An adapter that no commit names (an import nobody committed)."""
    repo = Repository.open(repo_dir)
    gen = torch.Generator().manual_seed(seed)
    tensors = {"m.lora_A.weight": torch.randn(4, 32, generator=gen), "m.lora_B.weight": torch.randn(32, 4, generator=gen)}
    aid = repo.store_adapter_tensors({"peft_type": "LORA", "r": 4, "lora_alpha": 8}, tensors)
    return aid, repo.read_adapter(aid).tensor_ids()


def _age_all_objects(repo_dir: Path, seconds: float) -> None:
    past = time.time() - seconds
    for p in object_files(repo_dir):
        os.utime(p, (past, past))


def test_gc_deletes_only_unreachable_objects_older_than_the_grace_period(cli, repo_dir, adapter_dir):
    cli.ok("commit", adapter_dir("a", seed=10), "-m", "kept", cwd=repo_dir)
    kept = set(object_files(repo_dir))
    aid, tids = _store_orphan_adapter(repo_dir, seed=1)
    orphans = {object_path(repo_dir, o) for o in [aid, *tids]}
    # Young: the default grace period (2 weeks) keeps them.
    report = cli.json("gc", "--json", cwd=repo_dir)
    assert report["deleted"] == 0 and report["kept_unreachable_young"] == 3
    assert set(object_files(repo_dir)) == kept | orphans
    # Older than the grace period: deleted, and only they.
    _age_all_objects(repo_dir, 15 * 86400)
    dry = cli.json("gc", "--dry-run", "--json", cwd=repo_dir)
    assert sorted(dry["deleted_ids"]) == sorted([aid, *tids]) and dry["dry_run"] is True
    assert set(object_files(repo_dir)) == kept | orphans
    report = cli.json("gc", "--json", cwd=repo_dir)
    assert sorted(report["deleted_ids"]) == sorted([aid, *tids]) and report["bytes_freed"] > 0
    assert set(object_files(repo_dir)) == kept
    code, fsck = fsck_json(cli, repo_dir, "--read-data")
    assert code == 0 and fsck["ok"] and fsck["dangling"] == []
    # --prune=now needs no waiting.
    aid2, tids2 = _store_orphan_adapter(repo_dir, seed=2)
    report = cli.json("gc", "--prune=now", "--json", cwd=repo_dir)
    assert sorted(report["deleted_ids"]) == sorted([aid2, *tids2])
    assert set(object_files(repo_dir)) == kept


def test_reflog_entries_keep_objects_alive_until_the_branch_is_deleted(cli, repo_dir, adapter_dir):
    cli.ok("commit", adapter_dir("a", seed=11), "-m", "base", cwd=repo_dir)
    base = branch_tip(repo_dir)
    cli.ok("switch", "-c", "sites/x", cwd=repo_dir)
    cli.ok("commit", adapter_dir("b", seed=12), "-m", "only on x", cwd=repo_dir)
    x_tip = branch_tip(repo_dir, "sites/x")
    repo = Repository.open(repo_dir)
    x_adapter = repo.read_commit(x_tip).adapter
    unique = {x_tip, x_adapter, *repo.read_adapter(x_adapter).tensor_ids()}
    cli.ok("switch", "main", cwd=repo_dir)
    # Move x back: its old commit is now reachable only from x's reflog.
    cli.ok("branch", "-f", "sites/x", "main", cwd=repo_dir)
    report = cli.json("gc", "--prune=now", "--json", cwd=repo_dir)
    assert report["deleted"] == 0
    assert all(object_path(repo_dir, o).exists() for o in unique)
    assert cli.json("show", x_tip, "--json", cwd=repo_dir)["id"] == x_tip
    # Deleting the branch deletes its reflog: now they go.
    cli.ok("branch", "-D", "sites/x", cwd=repo_dir)
    report = cli.json("gc", "--prune=now", "--json", cwd=repo_dir)
    assert set(report["deleted_ids"]) == unique
    assert not any(object_path(repo_dir, o).exists() for o in unique)
    code, fsck = fsck_json(cli, repo_dir, "--read-data")
    assert code == 0 and fsck["ok"] and fsck["missing"] == []
    # A new branch of the same name does not inherit the old reflog.
    cli.ok("branch", "sites/x", cwd=repo_dir)
    code, fsck = fsck_json(cli, repo_dir)
    assert code == 0 and fsck["ok"] and fsck["missing"] == [], fsck
    assert branch_tip(repo_dir) == base


def test_gc_refuses_to_run_when_history_is_damaged(cli, repo_dir, adapter_dir):
    cli.ok("commit", adapter_dir("a", seed=13), "-m", "one", cwd=repo_dir)
    first = branch_tip(repo_dir)
    cli.ok("commit", adapter_dir("b", seed=14), "-m", "two", cwd=repo_dir)
    _age_all_objects(repo_dir, 30 * 86400)
    flip_byte(object_path(repo_dir, first), -1)
    before = object_files(repo_dir)
    line = cli.fails("gc", "--prune=now", cwd=repo_dir, code=5)
    assert first in line and "corrupt" in line
    # The first commit's adapter and tensors look unreachable, but were kept.
    assert object_files(repo_dir) == before
    os.unlink(object_path(repo_dir, first))
    line = cli.fails("gc", "--prune=now", cwd=repo_dir, code=5)
    assert first in line and "missing" in line
    assert len(object_files(repo_dir)) == len(before) - 1


def test_fsck_reports_a_missing_object(cli, repo_dir, adapter_dir):
    cli.ok("commit", adapter_dir("a", seed=15), "-m", "one", cwd=repo_dir)
    repo = Repository.open(repo_dir)
    tid = repo.read_adapter(repo.read_commit(repo.head()).adapter).tensor_ids()[0]
    os.unlink(object_path(repo_dir, tid))
    res = cli("fsck", cwd=repo_dir)
    assert res.returncode == 5
    assert f"missing object {tid}" in res.stdout and "DAMAGED" in res.stdout
    code, report = fsck_json(cli, repo_dir)
    assert code == 5 and report["missing"] == [{"id": tid}] and report["bad_refs"] == [] and report["corrupt"] == []
    line = cli.fails("checkout", "HEAD", "--to", repo_dir.parent / "out", cwd=repo_dir, code=5)
    assert f"object {tid} is missing" in line


def test_fsck_reports_bad_refs(cli, repo_dir, adapter_dir):
    cli.ok("commit", adapter_dir("a", seed=16), "-m", "one", cwd=repo_dir)
    heads = repo_dir / ".mfgit" / "refs" / "heads"
    (heads / "garbage").write_text("this is not an id\n")
    (heads / "empty").write_text("")
    (heads / "dangling-ref").write_text("e" * 64 + "\n")
    res = cli("fsck", cwd=repo_dir)
    assert res.returncode == 5
    assert "bad ref refs/heads/garbage: invalid value 'this is not an id'" in res.stdout
    assert "bad ref refs/heads/empty: empty ref file" in res.stdout
    assert f"bad ref refs/heads/dangling-ref: points to missing object {'e' * 64}" in res.stdout
    code, report = fsck_json(cli, repo_dir)
    assert code == 5 and {b["ref"] for b in report["bad_refs"]} == {
        "refs/heads/garbage", "refs/heads/empty", "refs/heads/dangling-ref"}
    assert report["corrupt"] == []
    # The garbage value is a bad ref, not also a "missing object".
    assert all(m["id"] == "e" * 64 for m in report["missing"])


def test_fsck_reports_dangling_objects_but_passes(cli, repo_dir, adapter_dir):
    cli.ok("commit", adapter_dir("a", seed=17), "-m", "one", cwd=repo_dir)
    repo = Repository.open(repo_dir)
    head = repo.read_commit(repo.head())
    loose = Commit(adapter=head.adapter, parents=(), author=head.author, site=None,
                   timestamp=head.timestamp, message="never referenced", provenance={"kind": "import"})
    cid = repo.put_commit(loose)
    aid, _ = _store_orphan_adapter(repo_dir, seed=3)
    res = cli("fsck", cwd=repo_dir)
    assert res.returncode == 0, res.stdout
    assert f"dangling commit {cid}" in res.stdout and f"dangling adapter {aid}" in res.stdout
    assert res.stdout.rstrip().endswith(": ok")
    code, report = fsck_json(cli, repo_dir)
    assert code == 0 and report["ok"] is True
    assert {"id": cid, "kind": "commit"} in report["dangling"] and {"id": aid, "kind": "adapter"} in report["dangling"]
