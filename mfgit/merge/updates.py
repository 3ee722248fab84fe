"""One module's updates: each input's factors, the inputs a merge works on, and the merged result."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Factor", "ModuleInputs", "ModuleResult", "result"]


@dataclass(frozen=True)
class Factor:
    """One input's update of one module: ΔW = B @ A, scaling already folded in."""

    B: torch.Tensor  # out × r
    A: torch.Tensor  # r × in


@dataclass(frozen=True)
class ModuleInputs:
    """The inputs that adapt one module, as :func:`mfgit.merge.strategies.merge_module` checked them."""

    inputs: list[tuple[int, float, torch.Tensor, torch.Tensor]]  # (input index, weight, B, A), fp32, by index
    shape: tuple[int, int]  # (out, in)
    device: torch.device

    @property
    def ranks(self) -> list[int]:
        return [int(b.shape[1]) for _, _, b, _ in self.inputs]

    @property
    def limit(self) -> int:
        return min(self.shape)


@dataclass(frozen=True)
class ModuleResult:
    """The merged update of one module: ΔW = B @ A."""

    B: torch.Tensor  # out × rank
    A: torch.Tensor  # rank × in
    rank: int
    kept_energy: float  # fraction of ‖ΔW_strategy‖_F² kept by the final factorisation


def result(B: torch.Tensor, A: torch.Tensor, kept: float) -> ModuleResult:
    return ModuleResult(B.contiguous(), A.contiguous(), int(B.shape[1]), float(kept))
