"""Bytes by id: put / get / has / iterate, atomic writes, verify on read."""

from mfgit.store.disk import DiskStore
from mfgit.store.memory import MemoryStore
from mfgit.store.objectstore import ObjectStore

__all__ = ["DiskStore", "MemoryStore", "ObjectStore"]
