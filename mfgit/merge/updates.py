"""One module's updates: each input's factors, the inputs a merge works on, and the merged result."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Factor", "ModuleInputs", "ModuleResult", "result", "zero_result"]


@dataclass(frozen=True)
class Factor:
    """One input's update of one module: ΔW = B @ A, scaling already folded in.

    ``rank`` is the rank the rank policies count for this input when it is
    not B's width: a DoRA input's effective update is dense (B or A is an
    identity, :mod:`mfgit.merge.dora`) but counts as the adapter's own r, so
    ``--rank max``/``sum`` mean for it what they mean for a plain LoRA.
    """

    B: torch.Tensor  # out × r
    A: torch.Tensor  # r × in
    rank: int | None = None


@dataclass(frozen=True)
class ModuleInputs:
    """The inputs that adapt one module, as :func:`mfgit.merge.strategies.merge_module` checked them."""

    inputs: list[tuple[int, float, torch.Tensor, torch.Tensor]]  # (input index, weight, B, A), fp32, by index
    shape: tuple[int, int]  # (out, in)
    device: torch.device
    weights: tuple[float, ...]  # every input's weight, present or not, by index
    counted: tuple[int | None, ...] = ()  # per present input, Factor.rank (None: B's width)

    @property
    def ranks(self) -> list[int]:
        """The ranks the rank policies count, one per present input."""
        counted = self.counted or (None,) * len(self.inputs)
        return [int(b.shape[1]) if c is None else int(c) for (_, _, b, _), c in zip(self.inputs, counted)]

    @property
    def widths(self) -> int:
        """Σ of the factors' actual widths (more than Σ ranks when an input is dense)."""
        return int(sum(int(b.shape[1]) for _, _, b, _ in self.inputs))

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


def zero_result(out_f: int, in_f: int, rank: int | None, device: torch.device) -> ModuleResult:
    """A zero update of rank min(1, rank) (rank None: 1)."""
    r = 1 if rank is None else max(0, min(1, rank))
    B = torch.zeros((out_f, r), dtype=torch.float32, device=device)
    A = torch.zeros((r, in_f), dtype=torch.float32, device=device)
    return ModuleResult(B, A, r, 1.0)
