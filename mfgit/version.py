"""The version of mfgit, recorded in every commit's provenance."""

__version__ = "0.1.0"
