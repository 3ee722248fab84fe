"""Per-layer merging: one weight per (input, layer), each layer merged by the engine on its own.

A *layer* is a module's path up to its first numeric component
(``model.layers.11``); ``merge --search layer-weights`` tunes one weight per
input and layer, and the merge replays it from the recorded matrix.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Sequence

from mfgit.formats.peft import PEFT_PREFIX
from mfgit.merge.engine import (MergeInput, MergeOutput, Recipe, dora_record, merge_adapters, output_config,
                                output_dtype)
from mfgit.objects.model import Adapter


def layer_of(module: str) -> str:
    """The layer a module belongs to: its path up to the first numeric component.

    ``base_model.model.blocks.1.attn.q_proj`` → ``blocks.1``;
    ``model.layers.11.mlp.up_proj`` → ``model.layers.11``; a module with no
    numeric component (``head``) is a layer of its own.
    """
    name = module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[:i + 1])
    return name


def _natural(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def layer_groups(inputs: Sequence[MergeInput]) -> list[str]:
    mods = {m for inp in inputs for m in inp.adapter.modules}
    return sorted({layer_of(m) for m in mods}, key=_natural)


def _restrict(adapter: Adapter, modules: set[str]) -> Adapter:
    mods = {m: v for m, v in adapter.modules.items() if m in modules}
    names = {v["lora_A"] for v in mods.values()} | {v["lora_B"] for v in mods.values()}
    return Adapter(config=adapter.config, base_model=adapter.base_model,
                   tensors={k: v for k, v in adapter.tensors.items() if k in names}, modules=mods,
                   metadata=adapter.metadata, files={}, format=adapter.format)


def merge_layer_weights(inputs: Sequence[MergeInput], recipe: Recipe, matrix: Sequence[Sequence[float]],
                        groups: Sequence[str], load, progress=None) -> MergeOutput:
    """A linear merge with one weight per (input, layer): ``matrix[i][g]``.

    Each layer is merged by the engine on its own (module by module, exact in
    factor space); with the same weight in every layer the result is
    bit-identical to the plain merge.
    """
    t0 = time.perf_counter()
    rec = dataclasses.replace(recipe, dtype=output_dtype(inputs, recipe.dtype))
    all_modules = sorted({m for inp in inputs for m in inp.adapter.modules})
    tensors: dict[str, Any] = {}
    stats: dict[str, dict[str, Any]] = {}
    device, device_name = "cpu", "cpu"
    done = 0
    for g, group in enumerate(groups):
        mods = {m for m in all_modules if layer_of(m) == group}
        if not mods:
            continue
        sub = [MergeInput(inp.label, inp.id, _restrict(inp.adapter, mods), float(matrix[i][g]), inp.base)
               for i, inp in enumerate(inputs)]
        out = merge_adapters(sub, rec, load)
        tensors.update(out.tensors)
        stats.update(out.modules)
        device, device_name = out.device, out.device_name
        done += len(mods)
        if progress:
            progress(done, len(all_modules), group)
    stats = dict(sorted(stats.items()))
    return MergeOutput(tensors=tensors, config=output_config(inputs, stats), modules=stats, device=device,
                       device_name=device_name, dtype=rec.dtype, seconds=time.perf_counter() - t0,
                       dora=dora_record(inputs, all_modules))
