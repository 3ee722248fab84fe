"""Auditing who contributed what to a composite: diff, lineage, blame, verify,
signing, and export with a model card and a signed manifest.

Each module takes a `Repository` and returns plain data (dicts, lists) that
the CLI renders as text or JSON; `mfgit.api.audit` is the entry point the
Repository methods and the CLI call. See docs/audit.md.
"""
