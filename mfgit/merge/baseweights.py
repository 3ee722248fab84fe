"""The base model's weights, for merges whose inputs' updates depend on them (DoRA).

``merge --base-weights PATH`` names one safetensors file, or a model
directory whose ``*.safetensors`` files (a sharded checkpoint) hold the
weights together. Every file is validated as any safetensors file from
outside is (`mfgit.formats.safetensors`) and memory-mapped read-only;
nothing is read but the header and the weights of the modules asked for.

Identity. The merge commit records the weights' SHA-256, so that
``verify --reproduce`` can re-run the merge given the same file and refuse
another. For one file it is the SHA-256 of its bytes (what ``sha256sum``
prints); for a directory, the SHA-256 of the lines
``<file name> <SHA-256 of its bytes>\\n`` of its safetensors files in
sorted order. Which name holds which tensor takes no part: the bytes do.

Names. PEFT names a module of the base model ``X`` as
``base_model.model.X``; its weight is ``X.weight`` in the base model's own
checkpoint (``model.layers.0.self_attn.q_proj.weight`` for a Llama).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfgit.errors import BaseWeightsError, BaseWeightsMismatch, SafetensorsError
from mfgit.formats.peft import PEFT_PREFIX
from mfgit.formats.safetensors import SafetensorsReader
from mfgit.objects.model import TensorHeader
from mfgit.repo.tensors import torch_from_bytes

if TYPE_CHECKING:
    import torch

__all__ = ["BaseWeights", "open_base_weights"]

_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


class BaseWeights:
    """Validated, memory-mapped base weights with their digest (see the module docstring)."""

    def __init__(self, path: Path, readers: list[SafetensorsReader], files: list[dict[str, Any]], sha256: str):
        self.path = path
        self._readers = readers
        self.files = files  # [{"name", "sha256", "bytes"}], sorted by name
        self.sha256 = sha256
        self._where: dict[str, SafetensorsReader] = {}
        for reader in readers:
            for name in reader.header.tensors:
                if name in self._where:
                    raise BaseWeightsError(str(path), f"tensor {name!r} is in two files "
                                                      f"({Path(self._where[name].path).name}, {Path(reader.path).name})")
                self._where[name] = reader

    def record(self) -> dict[str, Any]:
        """What a merge commit records of them: the digest and each file's, never the path."""
        return {"sha256": self.sha256, "files": self.files}

    def check_digest(self, expected: str) -> None:
        """BaseWeightsMismatch unless these are the weights a merge recorded as `expected`."""
        if self.sha256 != expected:
            raise BaseWeightsMismatch(str(self.path), expected, self.sha256)

    def weight_name(self, module: str) -> str:
        """The name of `module`'s weight in the checkpoint; BaseWeightsError when it holds none."""
        inner = module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module
        for name in (inner + ".weight", module + ".weight"):
            if name in self._where:
                return name
        raise BaseWeightsError(str(self.path), f"holds no {inner}.weight for module {module}")

    def weight(self, module: str, shape: tuple[int, int], device: "torch.device | str" = "cpu") -> "torch.Tensor":
        """`module`'s base weight W as fp32 on `device`, checked to be of `shape` (out × in)."""
        import torch

        name = self.weight_name(module)
        reader = self._where[name]
        info = reader.header.tensors[name]
        if info.dtype not in _FLOAT_DTYPES:
            raise BaseWeightsError(str(self.path), f"{name} is {info.dtype}, not a float weight "
                                                   f"(quantised base weights cannot give DoRA's row norms)")
        if tuple(info.shape) != tuple(shape):
            raise BaseWeightsError(str(self.path), f"{name} has shape {list(info.shape)}, but the adapter's "
                                                   f"{module} needs {list(shape)}; is this the adapter's base model?")
        t = torch_from_bytes(TensorHeader(info.dtype, tuple(info.shape)), reader.tensor_bytes(name))
        return t.to(device=device, dtype=torch.float32)

    def close(self) -> None:
        for reader in self._readers:
            reader.close()


def _sha256_file(reader: SafetensorsReader) -> str:
    # The mapping the header was parsed from: the digest covers what is read.
    return hashlib.sha256(reader.file_bytes()).hexdigest()


def open_base_weights(path: str | os.PathLike) -> BaseWeights:
    """Open `path` (a .safetensors file or a directory of them); BaseWeightsError when it is neither."""
    p = Path(path)
    if p.is_dir():
        shards = sorted(f for f in p.iterdir() if f.name.endswith(".safetensors") and f.is_file())
        if not shards:
            raise BaseWeightsError(str(p), "the directory holds no .safetensors file")
    elif p.is_file():
        shards = [p]
    else:
        raise BaseWeightsError(str(p), "no such file or directory")
    readers: list[SafetensorsReader] = []
    files = []
    try:
        for f in shards:
            try:
                f.name.encode("utf-8")  # recorded in the commit, which holds valid Unicode only
            except UnicodeEncodeError:
                raise BaseWeightsError(str(p), f"holds a file whose name is not valid UTF-8 ({os.fsencode(f.name)!r})") from None
            try:
                reader = SafetensorsReader(f)
            except SafetensorsError as e:
                raise BaseWeightsError(str(p), f"{f.name} is not a valid safetensors file ({e.rule}: {e.detail})") from None
            readers.append(reader)
            files.append({"name": f.name, "sha256": _sha256_file(reader), "bytes": reader.header.file_size})
        if p.is_dir():
            listing = "".join(f"{f['name']} {f['sha256']}\n" for f in files)
            digest = hashlib.sha256(listing.encode("utf-8")).hexdigest()
        else:
            digest = files[0]["sha256"]
        return BaseWeights(p, readers, files, digest)
    except BaseException:
        for reader in readers:
            reader.close()
        raise
