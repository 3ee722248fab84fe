"""Hostile adapter directories are refused at commit, by the real CLI, with one line.

Each case is a real PEFT adapter with one thing made hostile: its
adapter_config.json (numbers, nesting, Unicode, patterns, ranks), its file
names, or its tensors. `mfgit commit` must print exactly one line, exit
with the table's code for bad input (4, never 70: an internal error), and
leave every ref and the reflog as they were.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

BAD_INPUT = 4
Q_PROJ = "base_model.model.model.layers.0.self_attn.q_proj"


def refs_snapshot(repo_dir: Path) -> dict[str, bytes]:
    """Every ref, HEAD and reflog file, by path."""
    git = repo_dir / ".mfgit"
    out = {"HEAD": (git / "HEAD").read_bytes()}
    for sub in ("refs", "logs"):
        for p in sorted((git / sub).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(git))] = p.read_bytes()
    return out


def write_config(adapter: Path, edit=None, *, raw: dict[str, str] | None = None) -> None:
    """Rewrite adapter_config.json: `edit(cfg)` changes the parsed config; `raw` puts
    literal JSON text in place of the named keys' values (what json.dumps cannot write)."""
    path = adapter / "adapter_config.json"
    cfg = json.loads(path.read_text())
    if edit is not None:
        edit(cfg)
    for key in raw or {}:
        cfg[key] = f"@@{key}@@"
    text = json.dumps(cfg, indent=2)
    for key, literal in (raw or {}).items():
        text = text.replace(f'"@@{key}@@"', literal)
    path.write_text(text)


def refused_commit(cli, repo_dir: Path, adapter: Path) -> str:
    before = refs_snapshot(repo_dir)
    line = cli.fails("commit", adapter, "-m", "hostile", cwd=repo_dir, code=BAD_INPUT)
    assert refs_snapshot(repo_dir) == before
    return line


HOSTILE_CONFIGS = {
    # name: (edit, raw literals, words the one line must hold)
    "400_digit_lora_alpha": (None, {"lora_alpha": "9" * 400}, "integer of 400 digits"),
    "5000_digit_integer": (None, {"x_count": "1" * 5000}, "integer of 5000 digits"),
    "float_out_of_range": (None, {"lora_alpha": "1e400"}, "out of the range"),
    "deep_nesting": (None, {"x_nested": "[" * 100_000 + "]" * 100_000}, "nested deeper"),
    "moderate_deep_nesting": (None, {"x_nested": "[" * 200 + "]" * 200}, "nested deeper"),
    "nan_lora_dropout": (None, {"lora_dropout": "NaN"}, "NaN"),
    "infinite_lora_alpha": (None, {"lora_alpha": "Infinity"}, "Infinity"),
    "lone_surrogate_in_a_string": (None, {"x_note": '"a\\ud800b"'}, "lone surrogate"),
    "lone_surrogate_in_a_key": (None, {"rank_pattern": '{"\\udfff": 8}'}, "lone surrogate"),
    "duplicate_key": (None, {"x_dup": '1, "x_dup": 2'}, "duplicate key"),
    "lora_dropout_above_one": (lambda c: c.update(lora_dropout=7), None, "lora_dropout"),
    "rank_pattern_invalid_regex": (lambda c: c.update(rank_pattern={"(": 8}), None, "rank_pattern key '('"),
    "rank_pattern_value_a_word": (lambda c: c.update(rank_pattern={"q_proj": "eight"}), None, "rank_pattern['q_proj']"),
    "rank_pattern_value_an_object": (lambda c: c.update(rank_pattern={"q_proj": {"r": 8}}), None, "rank_pattern['q_proj']"),
    "rank_pattern_not_an_object": (lambda c: c.update(rank_pattern=["q_proj"]), None, "rank_pattern must be an object"),
    "rank_pattern_backreference": (lambda c: c.update(rank_pattern={r"(q)\1": 8}), None, "linear-time"),
    "alpha_pattern_value_a_word": (lambda c: c.update(alpha_pattern={"q_proj": "high"}), None, "alpha_pattern"),
    "alpha_pattern_lookahead": (lambda c: c.update(alpha_pattern={"(?=q)q_proj": 8}), None, "linear-time"),
    "r_disagrees_with_the_tensors": (lambda c: c.update(r=4), None, "rank 4"),
    "r_1e30": (lambda c: c.update(r=1e30), None, "r must be an integer"),
    "r_a_string": (lambda c: c.update(r="8"), None, "r must be an integer"),
    "rank_pattern_rank_disagrees": (lambda c: c.update(rank_pattern={"q_proj": 4}), None, "rank_pattern['q_proj']"),
    "use_rslora_a_string": (lambda c: c.update(use_rslora="yes"), None, "use_rslora"),
    "base_model_name_an_object": (lambda c: c.update(base_model_name_or_path={"x": 1}), None,
                                  "base_model_name_or_path"),
    "peft_type_a_list": (lambda c: c.update(peft_type=["LORA"]), None, "peft_type"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CONFIGS))
def test_hostile_adapter_config_is_refused_at_commit_with_one_line(cli, repo_dir, adapter_dir, case):
    edit, raw, words = HOSTILE_CONFIGS[case]
    adapter = adapter_dir("a", seed=1)
    write_config(adapter, edit, raw=raw)
    line = refused_commit(cli, repo_dir, adapter)
    assert "adapter_config.json" in line or str(adapter) in line, line
    assert words in line, line


def test_hostile_config_is_refused_after_a_good_commit_too(cli, repo_dir, adapter_dir):
    cli.ok("commit", adapter_dir("good", seed=1), "-m", "good", cwd=repo_dir)
    adapter = adapter_dir("bad", seed=2)
    write_config(adapter, lambda c: c.update(rank_pattern={"(": 8}))
    refused_commit(cli, repo_dir, adapter)
    assert len(cli.json("log", "--json", cwd=repo_dir)) == 1


def test_extra_file_with_a_non_utf8_name_is_refused_naming_the_directory(cli, repo_dir, adapter_dir):
    adapter = adapter_dir("a", seed=1)
    with open(os.fsencode(adapter) + b"/notes-\xff\xfe.txt", "wb") as f:
        f.write(b"x")
    line = refused_commit(cli, repo_dir, adapter)
    assert str(adapter) in line and "not valid UTF-8" in line and "\\xff\\xfe" in line


@pytest.mark.parametrize("name", ["ADAPTER_MODEL.SAFETENSORS", "Adapter_Config.json", "notes\x07.txt"])
def test_extra_file_that_a_manifest_cannot_hold_is_refused(cli, repo_dir, adapter_dir, name):
    adapter = adapter_dir("a", seed=1)
    (adapter / name).write_bytes(b"not the weights")
    line = refused_commit(cli, repo_dir, adapter)
    assert "cannot hold" in line


def _rewrite_tensors(adapter: Path, change) -> None:
    path = adapter / "adapter_model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_zero_rank_module_is_refused_at_commit(cli, repo_dir, adapter_dir):
    adapter = adapter_dir("a", seed=1)

    def zero(t):
        t[f"{Q_PROJ}.lora_A.weight"] = torch.zeros((0, 64))
        t[f"{Q_PROJ}.lora_B.weight"] = torch.zeros((64, 0))

    _rewrite_tensors(adapter, zero)
    line = refused_commit(cli, repo_dir, adapter)
    assert "rank 0" in line and "q_proj" in line


def test_factors_of_disagreeing_ranks_are_refused_at_commit(cli, repo_dir, adapter_dir):
    adapter = adapter_dir("a", seed=1)
    _rewrite_tensors(adapter, lambda t: t.update({f"{Q_PROJ}.lora_B.weight": torch.zeros((64, 4))}))
    assert "rank" in refused_commit(cli, repo_dir, adapter)


def test_tensor_name_with_control_characters_is_refused_at_commit(cli, repo_dir, adapter_dir):
    adapter = adapter_dir("a", seed=1)
    _rewrite_tensors(adapter, lambda t: t.update({"base_model.model.x\n.lora_A.weight": torch.zeros((8, 4)),
                                                  "base_model.model.x\n.lora_B.weight": torch.zeros((4, 8))}))
    assert "control characters" in refused_commit(cli, repo_dir, adapter)


def _write_named_adapter(d: Path, module: str, rank_pattern: dict) -> Path:
    d.mkdir(parents=True)
    save_file({f"base_model.model.{module}.lora_A.weight": torch.ones((8, 16)),
               f"base_model.model.{module}.lora_B.weight": torch.ones((16, 8))},
              str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
    (d / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": [module],
        "base_model_name_or_path": "crafted", "rank_pattern": rank_pattern, "alpha_pattern": {}}))
    return d


def test_catastrophic_backtracking_pattern_does_not_stall_blame(cli, repo_dir, tmp_path):
    # The bug: rank_pattern key (a+)+b against a module of 28 a's made blame
    # take 17 s with Python's re, and four times longer per two more a's.
    module = "a" * 64
    cli.ok("commit", _write_named_adapter(tmp_path / "one", module, {"(a+)+b": 4}), "-m", "one", cwd=repo_dir)
    cli.ok("commit", _write_named_adapter(tmp_path / "two", module, {"(a+)+b": 4, "(a|aa)+c": 2}), "-m", "two",
           cwd=repo_dir)
    t0 = time.perf_counter()
    rows = cli.json("blame", "--json", cwd=repo_dir)["modules"]
    cli.ok("diff", "HEAD~1", "HEAD", cwd=repo_dir)
    assert time.perf_counter() - t0 < 20  # two process starts; the match itself takes microseconds
    assert [r["module"] for r in rows] == [f"base_model.model.{module}"]
