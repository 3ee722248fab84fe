"""Slices of a flat tensor for element-wise passes over one module's dense ΔW."""

from __future__ import annotations

import torch

__all__ = ["CHUNK", "slices"]

CHUNK = 1 << 18  # elements per slice for element-wise passes on the CPU (cache-sized)


def slices(n: int, device: torch.device) -> list[slice]:
    """Slices of a flat tensor of n elements for element-wise passes.

    On the CPU, cache-sized pieces (each piece goes through all its passes
    while it is in cache); on other devices one piece. Element-wise results do
    not depend on the slicing.
    """
    if device.type != "cpu" or n <= CHUNK:
        return [slice(0, n)]
    return [slice(i, min(n, i + CHUNK)) for i in range(0, n, CHUNK)]
