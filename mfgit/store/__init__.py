"""Bytes by id: put / get / has / iterate, atomic writes, verify on read."""

from mfgit.store.objectstore import DiskStore, MemoryStore, ObjectStore, StoredObject

__all__ = ["DiskStore", "MemoryStore", "ObjectStore", "StoredObject"]
