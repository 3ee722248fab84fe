"""Synthetic LoRA adapters of real model shapes, without the model.

One generator for the CPU merge benchmark at 8B scale (``merge_8b``) and the
CUDA one (``gpu``): the factors of three r=16 adapters on the seven linear
modules of every layer of a Llama-3-8B (or -70B) shaped model, drawn
deterministically, either written as PEFT adapter directories
(``adapter_model.safetensors`` + ``adapter_config.json``) or kept in memory.

Weights look trained, not freshly initialised: ``lora_A ~ N(0, 1/in)·c``
(c log-normal around 1) and ``lora_B ~ N(0, s²)`` with a per-tensor scale
``s`` log-uniform in [5e-4, 5e-3] (B ≠ 0). Tensor ``(site, layer, module)``
depends only on its own seed, so a run on 2 layers draws exactly the first
2 layers of the 32-layer adapters.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

RANK = 16
ALPHA = 32


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    intermediate: int
    kv_out: int
    layers: int

    def modules(self) -> dict[str, tuple[int, int]]:
        """Module name within a layer -> (out_features, in_features)."""
        h, i, kv = self.hidden, self.intermediate, self.kv_out
        return {
            "self_attn.q_proj": (h, h),
            "self_attn.k_proj": (kv, h),
            "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, h),
            "mlp.gate_proj": (i, h),
            "mlp.up_proj": (i, h),
            "mlp.down_proj": (h, i),
        }

    def with_layers(self, layers: int) -> "Shape":
        return Shape(self.name, self.hidden, self.intermediate, self.kv_out, layers)

    def adapter_bytes(self, rank: int = RANK, itemsize: int = 2) -> int:
        return self.layers * sum(rank * (o + i) * itemsize for o, i in self.modules().values())

    def dense_bytes(self, itemsize: int = 2) -> int:
        """Bytes of the adapted linear weights of the full model (what a merged copy must hold at least)."""
        return self.layers * sum(o * i * itemsize for o, i in self.modules().values())


LLAMA3_8B = Shape("Llama-3-8B", hidden=4096, intermediate=14336, kv_out=1024, layers=32)
LLAMA3_70B = Shape("Llama-3-70B", hidden=8192, intermediate=28672, kv_out=1024, layers=80)
TINY = Shape("tiny", hidden=64, intermediate=160, kv_out=16, layers=2)

PEFT_PREFIX = "base_model.model.model.layers"


def tensor_name(layer: int, module: str, which: str) -> str:
    return f"{PEFT_PREFIX}.{layer}.{module}.lora_{which}.weight"


def factors(shape: Shape, site: int, rank: int = RANK, dtype: str = "bf16") -> Iterator[tuple[str, Any]]:
    """(tensor name, tensor) of adapter `site`, layer by layer, in PEFT's naming."""
    import torch

    tdtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    for layer in range(shape.layers):
        for k, (module, (out_f, in_f)) in enumerate(shape.modules().items()):
            g = torch.Generator().manual_seed(((7000 + site) * 1000 + layer) * 16 + k)
            a_scale = (1.0 / in_f) ** 0.5 * math.exp(0.15 * float(torch.randn(1, generator=g)))
            b_scale = 10 ** float(torch.empty(1).uniform_(-3.3, -2.3, generator=g))
            yield tensor_name(layer, module, "A"), (torch.randn(rank, in_f, generator=g) * a_scale).to(tdtype)
            yield tensor_name(layer, module, "B"), (torch.randn(out_f, rank, generator=g) * b_scale).to(tdtype)


def peft_config(shape: Shape, rank: int = RANK, alpha: int = ALPHA) -> dict[str, Any]:
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": f"mfgit-bench/{shape.name}",
        "revision": None, "r": rank, "lora_alpha": alpha,
        "target_modules": sorted({m.split(".")[-1] for m in shape.modules()}),
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "inference_mode": True, "modules_to_save": None, "init_lora_weights": True,
    }


def write_adapter(path: Path, shape: Shape, site: int, rank: int = RANK, dtype: str = "bf16") -> int:
    """Write adapter `site` as a PEFT adapter directory; returns the safetensors file's size."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file(dict(factors(shape, site, rank, dtype)), str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps(peft_config(shape, rank), indent=2) + "\n")
    return (path / "adapter_model.safetensors").stat().st_size


def in_memory(shape: Shape, n: int = 3, rank: int = RANK, dtype: str = "bf16"):
    """n adapters as (Adapter manifests, {tensor id: CPU tensor}, bytes per adapter), for the engine directly."""
    from mfgit.formats import peft as peftfmt
    from mfgit.objects.model import Adapter

    names = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}
    store: dict[str, Any] = {}
    adapters, nbytes = [], []
    config = peft_config(shape, rank)
    for site in range(n):
        tensors: dict[str, dict[str, Any]] = {}
        size = 0
        for name, t in factors(shape, site, rank, dtype):
            tid = hashlib.sha256(f"{site}:{name}".encode()).hexdigest()  # manifests hold object ids
            store[tid] = t
            tensors[name] = {"id": tid, "dtype": names[dtype], "shape": list(t.shape)}
            size += t.numel() * t.element_size()
        modules = peftfmt.lora_modules({k: (v["dtype"], tuple(v["shape"])) for k, v in tensors.items()}, f"adapter {site}")
        adapters.append(Adapter(config=dict(config), base_model={"name": config["base_model_name_or_path"], "revision": None},
                                tensors=tensors, modules=modules))
        nbytes.append(size)
    return adapters, store, nbytes
