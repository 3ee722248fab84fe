"""Raw LoRA state dicts: the LoRA entries of a model's state dict, saved by a training script.

Many training scripts save neither ``adapter_config.json`` nor PEFT's names:
they `torch.save` (or `safetensors.torch.save_file`) the entries of
``model.state_dict()`` whose name contains ``lora``, e.g.
``vision_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight``.
Such a file records the factors but not how to apply them (``r``, ``alpha``,
the targets), so the user states the config (`LoraOptions`) and this module
turns the file's names into the ones ``PeftModel.save_pretrained`` writes:

* the adapter name PEFT puts after the role is dropped
  (``.lora_A.default.weight`` → ``.lora_A.weight``,
  ``.lora_magnitude_vector.default.weight`` → ``.lora_magnitude_vector``,
  ``.lora_embedding_A.default`` → ``.lora_embedding_A``), exactly as
  `peft.get_peft_model_state_dict` does;
* ``base_model.model.`` is put in front when absent;
* ``target_modules`` lists every adapted module by its full name, so PEFT
  adapts exactly those modules and no other module of the same short name
  (CLIP's text tower has ``q_proj`` too);
* ``lora_magnitude_vector`` tensors mean DoRA (``use_dora``).

Everything here works on names and shapes; only reading a pickle imports torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from mfgit.errors import BadLoraConfig, InvalidAdapter, InvalidRawLora, LoraConfigNeeded, LoraRankMismatch, PickleRefused
from mfgit.formats import peft as peftfmt
from mfgit.formats import safetensors as st
from mfgit.formats.jsonvalue import JSONValueError, loads_strict

PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
MAX_CONFIG_FILE_BYTES = 1 << 20

# The roles PEFT's LoRA layers save. Factors of linear layers are modules
# (``.weight``, and ``.bias`` with lora_bias); embedding factors and DoRA's
# magnitude are parameters saved without a suffix in PEFT's own files.
_FACTORS = ("lora_A", "lora_B")
_BARE = ("lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
_ROLES = _FACTORS + _BARE
_PARAM_SUFFIXES = ("weight", "bias")

# The option names a user writes (``--lora r=16,alpha=16``), each with
# the PEFT config field it sets.
_OPTION_FIELDS = {
    "r": "r",
    "alpha": "lora_alpha",
    "lora_alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "lora_dropout": "lora_dropout",
    "rslora": "use_rslora",
    "use_rslora": "use_rslora",
    "targets": "target_modules",
    "target_modules": "target_modules",
    "base": "base_model",
    "base_model": "base_model",
}
OPTION_KEYS = "r, alpha, dropout, rslora (and in a file: targets, base_model)"


@dataclass(frozen=True)
class LoraOptions:
    """The config a raw state dict does not record, as the user states it."""

    r: int
    lora_alpha: float
    lora_dropout: float = 0.0
    use_rslora: bool = False
    targets: tuple[str, ...] | None = None  # checked against the keys; the config lists full names
    base_model: str | None = None


@dataclass
class RawLora:
    """A raw LoRA state dict, its names mapped to PEFT's and its config built.

    `names` maps each tensor name in the file to its saved name;
    `state` holds the tensors of a pickle (read once, by torch's restricted
    loader), None for safetensors (read later, tensor by tensor).
    """

    path: Path
    pickled: bool
    config: dict[str, Any]
    names: dict[str, str]
    adapter_name: str | None
    state: dict[str, Any] | None = field(default=None, repr=False)


# -- the user's options --------------------------------------------------------------------------


def parse_lora_option(text: str) -> dict[str, Any]:
    """``r=16,alpha=16,dropout=0.1`` → {"r": "16", ...} (values checked by `lora_options`)."""
    out: dict[str, Any] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadLoraConfig("--lora", f"{part!r} is not KEY=VALUE")
        if key in ("targets", "target_modules", "base", "base_model"):
            raise BadLoraConfig("--lora", f"{key} is given with --base NAME or in a --lora-config file")
        if key in out:
            raise BadLoraConfig("--lora", f"{key} is given twice")
        out[key] = value.strip()
    return out


def read_lora_config(path: str | os.PathLike) -> dict[str, Any]:
    """A small JSON or YAML file of the same keys as ``--lora`` (plus ``targets``, ``base_model``)."""
    p = Path(path)
    where = f"--lora-config {p}"
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_FILE_BYTES:
            raise BadLoraConfig(where, f"it is {size} bytes; a LoRA config is a few lines")
        data = p.read_bytes()
    except OSError as e:
        raise BadLoraConfig(where, f"cannot be read: {e.strerror or e}") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            value = yaml.safe_load(data.decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as e:
            raise BadLoraConfig(where, f"not valid YAML ({type(e).__name__})") from None
    else:
        try:
            value = loads_strict(data, max_depth=8)
        except JSONValueError as e:
            raise BadLoraConfig(where, f"not valid JSON ({e}); name a .yaml file for YAML") from None
    if not isinstance(value, dict):
        raise BadLoraConfig(where, "it must hold a mapping of keys such as r, alpha, dropout")
    return value


def lora_options(values: Mapping[str, Any], where: str = "--lora") -> LoraOptions:
    """Check the user's options (strings from ``--lora``, or values from a file or the API)."""
    fields: dict[str, Any] = {}
    for key, value in values.items():
        name = _OPTION_FIELDS.get(key) if isinstance(key, str) else None
        if name is None:
            raise BadLoraConfig(where, f"unknown key {key!r}; the keys are {OPTION_KEYS}")
        if name in fields:
            raise BadLoraConfig(where, f"{name} is given twice (as {key!r} and another spelling)")
        fields[name] = value
    if "r" not in fields:
        raise BadLoraConfig(where, "r is missing: give the rank the adapter was trained with")
    if "lora_alpha" not in fields:
        # PEFT's default alpha (8) is rarely what was trained with, and the
        # update is scaled by alpha/r: guessing would change every output.
        raise BadLoraConfig(where, "alpha is missing: the update is scaled by alpha/r and the file does not record it")
    r = _integer(fields["r"], "r", where)
    if not 1 <= r <= peftfmt.MAX_RANK:
        raise BadLoraConfig(where, f"r must be from 1 to {peftfmt.MAX_RANK}, got {r}")
    alpha = _number(fields["lora_alpha"], "alpha", where)
    dropout = _number(fields.get("lora_dropout", 0.0), "dropout", where)
    if not 0.0 <= dropout <= 1.0:
        raise BadLoraConfig(where, f"dropout must be from 0 to 1, got {dropout:g}")
    rslora = _boolean(fields.get("use_rslora", False), "rslora", where)
    targets = fields.get("target_modules")
    if targets is not None:
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise BadLoraConfig(where, "targets must be a non-empty list of module names")
        targets = tuple(targets)
    base = fields.get("base_model")
    if base is not None and (not isinstance(base, str) or not base):
        raise BadLoraConfig(where, "base_model must be a name or path")
    return LoraOptions(r=r, lora_alpha=alpha, lora_dropout=dropout, use_rslora=rslora,
                       targets=targets, base_model=base)


def _integer(value: Any, key: str, where: str) -> int:
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise BadLoraConfig(where, f"{key} must be an integer, got {value!r}")


def _number(value: Any, key: str, where: str) -> int | float:
    """A finite number; an integer stays an integer (PEFT writes ``"lora_alpha": 16``)."""
    out: int | float | None = None
    if isinstance(value, str):
        for kind in (int, float):
            try:
                out = kind(value.strip())
                break
            except ValueError:
                continue
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out = value
    try:
        finite = out is not None and math.isfinite(float(out))
    except OverflowError:
        finite = False
    if not finite:
        raise BadLoraConfig(where, f"{key} must be a finite number, got {value!r}")
    return out


def _boolean(value: Any, key: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise BadLoraConfig(where, f"{key} must be true or false, got {value!r}")


# -- names ---------------------------------------------------------------------------------------


def split_name(key: str) -> tuple[str, str, str | None, str | None] | None:
    """(module, role, adapter name, parameter suffix) of a LoRA tensor name, or None.

    ``m.lora_A.default.weight`` → (m, lora_A, default, weight);
    ``m.lora_A.weight`` → (m, lora_A, None, weight) (already PEFT's name);
    ``m.lora_magnitude_vector.default.weight`` → (m, lora_magnitude_vector, default, weight);
    ``m.lora_embedding_A.default`` → (m, lora_embedding_A, default, None).
    """
    parts = key.split(".")
    # The last role in the name: a module may itself be named lora_something.
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in _ROLES:
            break
    else:
        return None
    module, role, rest = ".".join(parts[:i]), parts[i], parts[i + 1:]
    if not module:
        return None
    if role in _FACTORS:
        if len(rest) == 1 and rest[0] in _PARAM_SUFFIXES:
            return module, role, None, rest[0]
        if len(rest) == 2 and rest[1] in _PARAM_SUFFIXES and rest[0]:
            return module, role, rest[0], rest[1]
        return None
    if not rest:
        return module, role, None, None
    if role == "lora_magnitude_vector" and rest == ["weight"]:
        return module, role, None, "weight"
    if len(rest) == 1 and rest[0]:
        return module, role, rest[0], None
    if role == "lora_magnitude_vector" and len(rest) == 2 and rest[1] == "weight" and rest[0]:
        return module, role, rest[0], "weight"
    return None


def saved_name(module: str, role: str, suffix: str | None) -> str:
    """The name ``PeftModel.save_pretrained`` gives a tensor (prefix, no adapter name)."""
    full = module if module.startswith(peftfmt.PEFT_PREFIX) else peftfmt.PEFT_PREFIX + module
    if role in _FACTORS:
        return f"{full}.{role}.{suffix}"
    return f"{full}.{role}"  # PEFT saves the magnitude and embedding factors without a suffix


def targeted_by(module: str, targets: tuple[str, ...]) -> bool:
    """PEFT's rule for a list of target_modules: the name itself or a suffix after a dot."""
    return any(module == t or module.endswith("." + t) for t in targets)


# -- the plan ------------------------------------------------------------------------------------


def plan(path: Path, shapes: Mapping[str, tuple[str, tuple[int, ...]]], options: LoraOptions, *,
         pickled: bool) -> RawLora:
    """Map a raw state dict's names (name → (dtype, shape)) to PEFT's and build its config.

    InvalidRawLora for names that are not LoRA tensors or that clash,
    LoraRankMismatch when a module's factors have another rank than ``r``.
    """
    where = str(path)
    if not shapes:
        raise InvalidRawLora(where, "holds no tensors")
    names: dict[str, str] = {}
    source_of: dict[str, str] = {}  # saved name → the file's name (adapters of 100,000s of tensors)
    adapters: set[str] = set()
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    others = []
    for key, (_dtype, shape) in shapes.items():
        parsed = split_name(key) if isinstance(key, str) else None
        if parsed is None:
            others.append(key)
            continue
        module, role, adapter, suffix = parsed
        if adapter is not None:
            adapters.add(adapter)
        new = saved_name(module, role, suffix)
        if new in source_of:
            raise InvalidRawLora(where, f"{key!r} and {source_of[new]!r} are the same tensor of PEFT's adapter ({new})")
        names[key] = new
        source_of[new] = key
        if suffix != "bias":
            modules.setdefault(new[: new.rindex("." + role)], {})[role] = tuple(shape)
    if not names:
        raise InvalidRawLora(where, f"no LoRA tensors: none of its {len(shapes)} names has lora_A / lora_B "
                                    f"(first: {_short(next(iter(shapes)))})")
    if others:
        more = f" (nor are {len(others) - 1} more)" if len(others) > 1 else ""
        raise InvalidRawLora(where, f"{_short(others[0])} is not a LoRA tensor{more}; "
                                    "save only the entries whose name contains lora")
    if len(adapters) > 1:
        raise InvalidRawLora(where, f"holds the adapters {', '.join(sorted(adapters))}; save one adapter per file")
    dora = False
    for module, roles in sorted(modules.items()):
        inner = module[len(peftfmt.PEFT_PREFIX):]
        if "lora_magnitude_vector" in roles:
            dora = True
        a = roles.get("lora_A", roles.get("lora_embedding_A"))
        if a is None:
            raise InvalidRawLora(where, f"module {inner} has {', '.join(sorted(roles))} but no lora_A")
        if len(a) != 2:
            raise InvalidRawLora(where, f"module {inner}: lora_A must be 2-D, got shape {list(a)}")
        if a[0] != options.r:
            raise LoraRankMismatch(where, inner, options.r, a[0])
        mag = roles.get("lora_magnitude_vector")
        b = roles.get("lora_B")
        if mag is not None and b is not None and (len(mag) != 1 or len(b) != 2 or mag[0] != b[0]):
            raise InvalidRawLora(where, f"module {inner}: lora_magnitude_vector has shape {list(mag)}, "
                                        f"not the output size of lora_B {list(b)}")
    targets = sorted(m[len(peftfmt.PEFT_PREFIX):] for m in modules)
    if options.targets is not None:
        for t in targets:
            if not targeted_by(t, options.targets):
                raise InvalidRawLora(where, f"module {t} is not one of the targets given "
                                            f"({', '.join(options.targets)})")
    config = build_config(options, targets, dora=dora,
                          lora_bias=any(v.endswith(".bias") for v in names.values()))
    renamed = {names[k]: v for k, v in shapes.items()}
    # The rules of a manifest, checked before anything is stored, and said
    # of the file the user gave rather than of a PEFT directory.
    try:
        config = peftfmt.validate_config(config, where)
        for name in renamed:
            problem = peftfmt.tensor_name_problem(name)
            if problem:
                raise InvalidAdapter(where, f"tensor name {name[:80]!r}: {problem}")
        peftfmt.check_ranks(config, peftfmt.lora_modules(renamed, where), where)
    except InvalidAdapter as e:
        raise InvalidRawLora(where, e.reason) from None
    return RawLora(path=path, pickled=pickled, config=config, names=names,
                   adapter_name=next(iter(adapters)) if adapters else None)


def build_config(options: LoraOptions, targets: list[str], *, dora: bool, lora_bias: bool) -> dict[str, Any]:
    """adapter_config.json for the state dict: the fields PEFT reads, the others at PEFT's defaults."""
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": options.base_model,
        "revision": None,
        "inference_mode": True,
        "r": options.r,
        "lora_alpha": options.lora_alpha,
        "lora_dropout": options.lora_dropout,
        "use_rslora": options.use_rslora,
        "use_dora": dora,
        "lora_bias": lora_bias,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


# -- reading the file ----------------------------------------------------------------------------


def is_raw_file(path: Path) -> bool:
    """A file (not a PEFT directory) of a kind a raw state dict is saved as."""
    return path.is_file() and path.suffix.lower() in (*PICKLE_SUFFIXES, SAFETENSORS_SUFFIX)


def inspect_raw_file(path: str | os.PathLike, options: LoraOptions | None, *,
                     allow_pickle: bool = False) -> RawLora:
    """Read a raw LoRA state dict's names and shapes (and a pickle's tensors) and plan its import.

    The order of the checks is the order a user fixes them in: the file,
    the missing config, the pickle, then its contents.
    """
    p = Path(path)
    where = str(p)
    if not p.exists():
        raise InvalidRawLora(where, "no such file")
    if p.is_dir():
        raise BadLoraConfig("--lora", f"{where} is a directory; --lora describes a raw state dict file "
                                      "(a PEFT directory has its adapter_config.json)")
    suffix = p.suffix.lower()
    if suffix not in (*PICKLE_SUFFIXES, SAFETENSORS_SUFFIX):
        raise InvalidRawLora(where, f"a raw state dict is a {', '.join(PICKLE_SUFFIXES)} or "
                                    f"{SAFETENSORS_SUFFIX} file, not {suffix or 'a file without suffix'}")
    if options is None:
        if (p.parent / peftfmt.CONFIG_NAME).is_file():
            raise InvalidAdapter(where, f"is the weights file of a PEFT adapter directory; commit the directory "
                                        f"{p.parent}")
        raise LoraConfigNeeded(where)
    pickled = suffix in PICKLE_SUFFIXES
    if pickled:
        if not allow_pickle:
            raise PickleRefused(where)
        try:
            state = peftfmt.load_pickle_tensors(p)
        except InvalidAdapter as e:
            raise InvalidRawLora(where, e.reason) from None
        shapes = {k: (str(v.dtype), tuple(v.shape)) for k, v in state.items()}
        raw = plan(p, shapes, options, pickled=True)
        raw.state = state
        return raw
    header = st.read_header(p)
    shapes = {i.name: (i.dtype, tuple(i.shape)) for i in header.tensors.values()}
    return plan(p, shapes, options, pickled=False)


def resolve_options(lora: LoraOptions | Mapping[str, Any] | str | os.PathLike | None,
                    base_model: str | None = None) -> LoraOptions | None:
    """The options of the API's ``lora=``: a mapping of keys, the path of a config file, or
    `LoraOptions`; `base_model`, when given, names the base model (over the file's ``base_model``)."""
    if lora is None:
        return None  # with or without base_model: the missing r and alpha are what to report
    if isinstance(lora, LoraOptions):
        options = lora
    elif isinstance(lora, Mapping):
        options = lora_options(lora, "lora")
    elif isinstance(lora, (str, os.PathLike)):
        options = lora_options(read_lora_config(lora), f"--lora-config {lora}")
    else:
        raise BadLoraConfig("lora", f"give a mapping such as {{'r': 16, 'alpha': 16}} or a config file's path, "
                                    f"not {type(lora).__name__}")
    if base_model is not None:
        if not isinstance(base_model, str) or not base_model:
            raise BadLoraConfig("--base", "give the base model's name or path")
        options = replace(options, base_model=base_model)
    return options
