"""mfgit: version control for LoRA adapters.

A content-addressed store for adapters, one branch per site, weight-space
merges with provenance, and remotes on a shared folder or S3.
"""

from mfgit.version import __version__

__all__ = ["Repository", "__version__"]


def __getattr__(name):
    # Lazy so that `import mfgit` stays cheap (the CLI's hot paths avoid torch).
    if name == "Repository":
        from mfgit.api.repository import Repository

        return Repository
    raise AttributeError(name)
