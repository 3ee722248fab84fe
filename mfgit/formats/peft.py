"""PEFT LoRA adapter directories: inspection, validation, scaling rules, writing.

A PEFT adapter directory, as `PeftModel.save_pretrained` writes it, holds
``adapter_config.json`` and ``adapter_model.safetensors`` (older PEFT:
``adapter_model.bin``, a pickle), and often a ``README.md``. Module names
here are the saved tensor names without the ``.lora_A.weight`` suffix.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mfgit.errors import InvalidAdapter, OutputNotEmpty, PickleRefused, UnsafePath

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
MAX_CONFIG_BYTES = 4 << 20
MAX_EXTRA_FILE_BYTES = 16 << 20
PEFT_PREFIX = "base_model.model."

_SUFFIXES = {
    ".lora_A.weight": ("linear", "lora_A"),
    ".lora_B.weight": ("linear", "lora_B"),
    ".lora_embedding_A": ("embedding", "lora_A"),
    ".lora_embedding_B": ("embedding", "lora_B"),
}


@dataclass
class AdapterDir:
    """What is in an adapter directory, validated but not yet read in full."""

    path: Path
    config: dict[str, Any]
    weights: Path
    pickled: bool
    extra_files: list[Path] = field(default_factory=list)


def inspect_adapter_dir(path: str | os.PathLike, *, allow_pickle: bool = False) -> AdapterDir:
    p = Path(path)
    if not p.exists():
        raise InvalidAdapter(str(p), "no such file or directory")
    if not p.is_dir():
        raise InvalidAdapter(str(p), "not a directory; give the PEFT adapter directory (with adapter_config.json)")
    cfg_path = p / CONFIG_NAME
    if not cfg_path.is_file():
        raise InvalidAdapter(str(p), f"no {CONFIG_NAME}; is this a PEFT adapter directory written by save_pretrained?")
    config = read_config(cfg_path)
    weights = p / WEIGHTS_NAME
    pickled = False
    if not weights.is_file():
        pick = next((p / n for n in PICKLE_NAMES if (p / n).is_file()), None)
        if pick is None:
            raise InvalidAdapter(str(p), f"no {WEIGHTS_NAME} next to {CONFIG_NAME}")
        if not allow_pickle:
            raise PickleRefused(str(pick))
        weights, pickled = pick, True
    extras = []
    for entry in sorted(p.iterdir()):
        if entry.name in (CONFIG_NAME, weights.name) or entry.name.startswith("."):
            continue
        if entry.is_dir():
            raise InvalidAdapter(
                str(p), f"contains the subdirectory {entry.name!r} (several adapters?); commit one adapter directory at a time"
            )
        if entry.is_file() and not entry.is_symlink() and entry.name not in PICKLE_NAMES:
            if entry.stat().st_size > MAX_EXTRA_FILE_BYTES:
                raise InvalidAdapter(str(entry), "extra file larger than 16 MiB; adapter directories hold adapters only")
            extras.append(entry)
    return AdapterDir(p, config, weights, pickled, extras)


def read_config(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise InvalidAdapter(str(path), f"config is {size} bytes; refusing more than {MAX_CONFIG_BYTES}")
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidAdapter(str(path), f"not valid JSON ({e})") from None
    return validate_config(config, str(path))


def validate_config(config: Any, where: str) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise InvalidAdapter(where, "adapter config is not a JSON object")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise InvalidAdapter(where, f"peft_type is {config.get('peft_type')!r}; mfgit versions LoRA adapters")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise InvalidAdapter(where, f"r must be a positive integer, got {r!r}")
    alpha = config.get("lora_alpha", r)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise InvalidAdapter(where, f"lora_alpha must be a number, got {alpha!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        v = config.get(key) or {}
        if not isinstance(v, dict):
            raise InvalidAdapter(where, f"{key} must be an object")
    return normalise_config(config)


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """The one normalisation applied to a stored config: PEFT keeps
    ``target_modules`` as a set and writes it in arbitrary order, so a list
    is sorted; otherwise the same adapter would get a different id on every
    save. Everything else is kept as written."""
    tm = config.get("target_modules")
    if isinstance(tm, list) and all(isinstance(x, str) for x in tm):
        config = {**config, "target_modules": sorted(tm)}
    return config


def lora_modules(tensors: dict[str, tuple[str, tuple[int, ...]]], where: str) -> dict[str, dict[str, Any]]:
    """Pair lora_A / lora_B tensors by module; check their shapes agree.

    `tensors` maps saved names to (dtype, shape).
    """
    modules: dict[str, dict[str, Any]] = {}
    for name in tensors:
        # Every suffix starts with its only ".lora_": one search and one
        # lookup per name instead of four endswith (adapters of 200,000 tensors).
        i = name.rfind(".lora_")
        found = _SUFFIXES.get(name[i:]) if i >= 0 else None
        if found is None:
            continue
        kind, role = found
        mod = name[:i]
        entry = modules.get(mod)
        if entry is None:
            entry = modules[mod] = {"kind": kind}
        elif entry["kind"] != kind:
            raise InvalidAdapter(where, f"module {mod} mixes linear and embedding LoRA tensors")
        entry[role] = name
    for mod, entry in modules.items():
        if "lora_A" not in entry or "lora_B" not in entry:
            missing = "lora_B" if "lora_A" in entry else "lora_A"
            raise InvalidAdapter(where, f"module {mod} has no {missing} tensor")
        a_shape, b_shape = tensors[entry["lora_A"]][1], tensors[entry["lora_B"]][1]
        if len(a_shape) != 2 or len(b_shape) != 2:
            raise InvalidAdapter(where, f"module {mod}: LoRA factors must be 2-D, got {a_shape} and {b_shape}")
        if entry["kind"] == "linear":
            r_a, r_b = a_shape[0], b_shape[1]
        else:  # embedding: A is (r, num_embeddings), B is (dim, r)
            r_a, r_b = a_shape[0], b_shape[1]
        if r_a != r_b:
            raise InvalidAdapter(where, f"module {mod}: lora_A has rank {r_a} but lora_B has rank {r_b}")
        entry["r"] = r_a
    if not modules:
        raise InvalidAdapter(where, "no lora_A / lora_B tensors found")
    return dict(sorted(modules.items()))


def pattern_key(patterns: Iterable[str], module: str) -> str | None:
    """PEFT's rule (peft.utils.other.get_pattern_key): first key k with
    re.match(rf"(.*\\.)?({k})$", module)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def module_scaling(config: dict[str, Any], module: str, rank: int) -> tuple[int, float, float]:
    """(r, alpha, scaling) of one module, as PEFT computes them when loading.

    `module` is the saved name; PEFT matches patterns against the name
    inside the base model, i.e. without the ``base_model.model.`` prefix.
    """
    inner = module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module
    rp = config.get("rank_pattern") or {}
    ap = config.get("alpha_pattern") or {}
    rk = pattern_key(rp.keys(), inner)
    ak = pattern_key(ap.keys(), inner)
    r = int(rp[rk]) if rk is not None else int(config["r"])
    alpha = float(ap[ak]) if ak is not None else float(config.get("lora_alpha", config["r"]))
    if r != rank:
        # The tensors are the truth; a config that disagrees would make PEFT
        # fail to load them, so say so rather than scale by the wrong r.
        raise InvalidAdapter(module, f"config gives rank {r} but the saved factors have rank {rank}")
    if config.get("use_rslora"):
        scaling = alpha / math.sqrt(r)
    else:
        scaling = alpha / r
    return r, alpha, scaling


def variants(config: dict[str, Any]) -> list[str]:
    """LoRA variants a weight merge cannot treat as a plain B·A update."""
    out = []
    if config.get("use_dora"):
        out.append("DoRA (use_dora)")
    if config.get("lora_bias"):
        out.append("lora_bias")
    if config.get("fan_in_fan_out"):
        out.append("fan_in_fan_out")
    if config.get("modules_to_save"):
        out.append("modules_to_save (fully trained modules)")
    for key in ("use_qalora", "corda_config", "eva_config", "layer_replication", "trainable_token_indices"):
        if config.get(key):
            out.append(key)
    return out


def load_pickle_tensors(path: Path) -> dict[str, Any]:
    """Load a pickle checkpoint with torch's restricted unpickler only."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError and others
        raise InvalidAdapter(str(path), f"refused by the restricted loader (weights_only=True): {type(e).__name__}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise InvalidAdapter(str(path), "pickle does not hold a flat dict of tensors")
    return state


def safe_join(root: Path, name: str) -> Path:
    """`root / name`, refusing anything that would land outside `root`."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
        raise UnsafePath(name, "file names in an adapter are plain names inside the output directory")
    out = (root / name).resolve()
    if out.parent != root.resolve():
        raise UnsafePath(name, "it resolves outside the output directory")
    return out


def prepare_output_dir(path: str | os.PathLike, *, force: bool) -> Path:
    out = Path(path)
    if out.exists():
        if not out.is_dir():
            raise OutputNotEmpty(str(out))
        if any(out.iterdir()) and not force:
            raise OutputNotEmpty(str(out))
    else:
        out.mkdir(parents=True)
    return out


def config_bytes(config: dict[str, Any]) -> bytes:
    """adapter_config.json exactly as PEFT's save_pretrained formats it."""
    return json.dumps(config, indent=2, sort_keys=True).encode("utf-8")
