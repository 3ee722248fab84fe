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
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mfgit.errors import InvalidAdapter, OutputNotEmpty, PickleRefused, UnsafePath
from mfgit.formats.jsonvalue import JSONValueError, loads_strict
from mfgit.formats.patterns import PatternError, check_key, first_match

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
MAX_CONFIG_BYTES = 4 << 20
MAX_CONFIG_DEPTH = 32
MAX_EXTRA_FILE_BYTES = 16 << 20
MAX_RANK = 1 << 20
MAX_TENSOR_NAME = 4096
# Names a manifest's `files` may never use: checkout writes the config and
# the weights from the manifest's own fields, so a blob under one of these
# names would replace what verify checked (compared case-folded, as
# case-insensitive file systems do).
RESERVED_FILE_NAMES = frozenset(n.casefold() for n in (CONFIG_NAME, WEIGHTS_NAME, *PICKLE_NAMES))
PEFT_PREFIX = "base_model.model."

# DoRA (use_dora) saves one magnitude vector per module, beside its factors:
# `<module>.lora_magnitude_vector`, the learned norm of each output row.
MAGNITUDE_SUFFIX = ".lora_magnitude_vector"
DORA = "DoRA (use_dora)"

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
        if not _is_utf8(entry.name):
            raise InvalidAdapter(str(p), f"contains a file whose name is not valid UTF-8 ({os.fsencode(entry.name)!r}); "
                                         "rename or remove it")
        if entry.name in (CONFIG_NAME, weights.name) or entry.name.startswith("."):
            continue
        if entry.is_dir():
            raise InvalidAdapter(
                str(p), f"contains the subdirectory {entry.name!r} (several adapters?); commit one adapter directory at a time"
            )
        if entry.is_file() and not entry.is_symlink() and entry.name not in PICKLE_NAMES:
            problem = file_name_problem(entry.name)
            if problem:
                raise InvalidAdapter(str(p), f"contains the file {entry.name!r}, which an adapter cannot hold: {problem}")
            if entry.stat().st_size > MAX_EXTRA_FILE_BYTES:
                raise InvalidAdapter(str(entry), "extra file larger than 16 MiB; adapter directories hold adapters only")
            extras.append(entry)
    return AdapterDir(p, config, weights, pickled, extras)


def read_config(path: Path) -> dict[str, Any]:
    """adapter_config.json, parsed strictly (`mfgit.formats.jsonvalue`) and validated."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise InvalidAdapter(str(path), f"config is {size} bytes; refusing more than {MAX_CONFIG_BYTES}")
    try:
        config = loads_strict(path.read_bytes(), max_depth=MAX_CONFIG_DEPTH)
    except JSONValueError as e:
        raise InvalidAdapter(str(path), f"not a valid adapter config ({e})") from None
    return validate_config(config, str(path))


def validate_config(config: Any, where: str) -> dict[str, Any]:
    """A LoRA config mfgit can store and every reader can use; InvalidAdapter naming the rule otherwise."""
    if not isinstance(config, dict):
        raise InvalidAdapter(where, "adapter config is not a JSON object")
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str) or peft_type.upper() != "LORA":
        raise InvalidAdapter(where, f"peft_type is {_short(peft_type)}; mfgit versions LoRA adapters")
    for key in ("base_model_name_or_path", "revision"):
        if not isinstance(config.get(key), (str, type(None))):
            raise InvalidAdapter(where, f"{key} must be a string or null, got {_short(config.get(key))}")
    dropout = config.get("lora_dropout", 0.0)
    if not _is_number(dropout) or not 0.0 <= float(dropout) <= 1.0:
        raise InvalidAdapter(where, f"lora_dropout must be a number from 0 to 1, got {_short(dropout)}")
    try:
        check_scaling_config(config)
    except ValueError as e:
        raise InvalidAdapter(where, str(e)) from None
    return normalise_config(config)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int too large for a float
        return False


def _is_rank(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_RANK


def check_scaling_config(config: Mapping[str, Any]) -> None:
    """The fields PEFT reads to scale each module — ``r``, ``lora_alpha``,
    ``use_rslora``, ``rank_pattern``, ``alpha_pattern`` — are of types and in
    ranges that `module_scaling` can use, and every pattern key can be
    matched exactly and in linear time (`mfgit.formats.patterns`).
    ValueError naming the field otherwise."""
    r = config.get("r")
    if not _is_rank(r):
        raise ValueError(f"r must be an integer from 1 to {MAX_RANK}, got {_short(r)}")
    alpha = config.get("lora_alpha", r)
    if not _is_number(alpha):
        raise ValueError(f"lora_alpha must be a finite number, got {_short(alpha)}")
    if not isinstance(config.get("use_rslora", False), (bool, type(None))):
        raise ValueError(f"use_rslora must be true or false, got {_short(config.get('use_rslora'))}")
    for field_name, valid, what in (("rank_pattern", _is_rank, f"an integer from 1 to {MAX_RANK}"),
                                    ("alpha_pattern", _is_number, "a finite number")):
        patterns = config.get(field_name)
        if patterns is None:
            continue
        if not isinstance(patterns, dict):
            raise ValueError(f"{field_name} must be an object of pattern -> value, got {_short(patterns)}")
        for key, value in patterns.items():
            try:
                check_key(key)
            except PatternError as e:
                raise ValueError(f"{field_name} key {_short(key)}: {e.reason}") from None
            if not valid(value):
                raise ValueError(f"{field_name}[{_short(key)}] must be {what}, got {_short(value)}")


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """The one normalisation applied to a stored config: PEFT keeps
    ``target_modules`` as a set and writes it in arbitrary order, so a list
    is sorted; otherwise the same adapter would get a different id on every
    save. Everything else is kept as written."""
    tm = config.get("target_modules")
    if isinstance(tm, list) and all(isinstance(x, str) for x in tm):
        config = {**config, "target_modules": sorted(tm)}
    return config


def lora_modules(tensors: dict[str, tuple[str, tuple[int, ...]]], where: str, *,
                 require: bool = True) -> dict[str, dict[str, Any]]:
    """Pair lora_A / lora_B tensors by module; check their shapes agree and their rank is positive.

    `tensors` maps saved names to (dtype, shape). With `require`, an adapter
    without any LoRA module is refused.
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
            raise InvalidAdapter(where, f"module {mod}: LoRA factors must be 2-D, got {list(a_shape)} and {list(b_shape)}")
        # linear: A is (r, in), B is (out, r); embedding: A is (r, num_embeddings), B is (dim, r)
        r_a, r_b = a_shape[0], b_shape[1]
        if r_a != r_b:
            raise InvalidAdapter(where, f"module {mod}: lora_A has rank {r_a} but lora_B has rank {r_b}")
        if r_a == 0:
            raise InvalidAdapter(where, f"module {mod} has rank 0 (empty LoRA factors); PEFT cannot scale it")
        entry["r"] = r_a
    if not modules and require:
        raise InvalidAdapter(where, "no lora_A / lora_B tensors found")
    return dict(sorted(modules.items()))


def check_ranks(config: Mapping[str, Any], modules: Mapping[str, Mapping[str, Any]], where: str) -> None:
    """The rank PEFT would give each module (``r``, or its ``rank_pattern``
    entry) is the rank of its saved factors; InvalidAdapter naming the first
    module that disagrees. PEFT could not load such an adapter, and any
    scaling computed from it would be wrong."""
    _checked(config, where)
    for name, m in modules.items():
        _scaling(config, name, int(m["r"]), where)


def pattern_key(patterns: Mapping[str, Any], module: str) -> str | None:
    """PEFT's rule (peft.utils.other.get_pattern_key): the first key k with
    ``re.match(rf"(.*\\.)?({k})$", module)`` — matched in linear time by
    `mfgit.formats.patterns` — else the module's own name if it is a key
    (PEFT then looks the name itself up), else None."""
    key = first_match(patterns.keys(), module)
    if key is None and module in patterns:
        return module
    return key


def module_scaling(config: Mapping[str, Any], module: str, rank: int, *,
                   where: str | None = None) -> tuple[int, float, float]:
    """(r, alpha, scaling) of one module, as PEFT computes them when loading.

    `module` is the saved name; PEFT matches patterns against the name
    inside the base model, i.e. without the ``base_model.model.`` prefix.
    InvalidAdapter when the config cannot scale the module (see
    `check_scaling_config`) or gives it another rank than `rank`.
    """
    _checked(config, where or module)
    return _scaling(config, module, rank, where or module)


def _checked(config: Mapping[str, Any], where: str) -> None:
    try:
        check_scaling_config(config)
    except ValueError as e:
        raise InvalidAdapter(where, str(e)) from None


def _scaling(config: Mapping[str, Any], module: str, rank: int, where: str) -> tuple[int, float, float]:
    """module_scaling of a config that passed check_scaling_config."""
    inner = module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module
    rp = config.get("rank_pattern") or {}
    ap = config.get("alpha_pattern") or {}
    try:
        rk = pattern_key(rp, inner)
        ak = pattern_key(ap, inner)
    except PatternError as e:
        raise InvalidAdapter(where, str(e)) from None
    r = rp[rk] if rk is not None else config["r"]
    alpha = float(ap[ak] if ak is not None else config.get("lora_alpha", config["r"]))
    if r != rank:
        # The tensors are the truth; a config that disagrees would make PEFT
        # fail to load them, so say so rather than scale by the wrong r.
        src = f"rank_pattern[{_short(rk)}]" if rk is not None else "r"
        raise InvalidAdapter(where, f"module {module}: the config gives rank {r} ({src}) but the saved "
                                    f"factors have rank {rank}")
    if config.get("use_rslora"):
        scaling = alpha / math.sqrt(r)
    else:
        scaling = alpha / r
    return r, alpha, scaling


def magnitude_name(module: str) -> str:
    """The saved name of a DoRA module's magnitude vector."""
    return module + MAGNITUDE_SUFFIX


def variants(config: dict[str, Any]) -> list[str]:
    """LoRA variants a weight merge cannot treat as a plain B·A update (`DORA` among them)."""
    out = []
    if config.get("use_dora"):
        out.append(DORA)
    if config.get("lora_bias"):
        out.append("lora_bias")
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


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.listdir's surrogateescape for undecodable bytes
        return False
    return True


def file_name_problem(name: Any) -> str | None:
    """Why `name` cannot be the name of an extra file of an adapter, or None.

    A plain, non-hidden name inside the adapter directory, in valid UTF-8,
    without control characters, at most 255 bytes, and none of the PEFT
    file names (`RESERVED_FILE_NAMES`)."""
    if not isinstance(name, str) or not name:
        return "an empty name"
    if not _is_utf8(name):
        return "not valid UTF-8"
    if name in (".", "..") or "/" in name or "\\" in name:
        return "not a plain name inside the directory"
    if name.startswith("."):
        return "a hidden name (leading dot)"
    if not name.isprintable() and any(unicodedata.category(c) == "Cc" for c in name):
        return "it contains control characters"
    if len(name.encode("utf-8")) > 255:
        return "longer than 255 bytes"
    if name.casefold() in RESERVED_FILE_NAMES:
        return "a PEFT file name, which mfgit writes from the manifest itself"
    return None


def tensor_name_problem(name: Any) -> str | None:
    """Why `name` cannot name a saved tensor in a manifest, or None: a non-empty
    string of valid Unicode without control characters (which would garble
    every listing of the adapter and which the pattern rules cannot match),
    at most `MAX_TENSOR_NAME` characters."""
    if not isinstance(name, str) or not name:
        return "an empty name"
    if not _is_utf8(name):
        return "not valid Unicode (a lone surrogate)"
    if len(name) > MAX_TENSOR_NAME:
        return f"longer than {MAX_TENSOR_NAME} characters"
    if not name.isprintable() and any(unicodedata.category(c) == "Cc" for c in name):
        return "it contains control characters"
    return None


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
