"""The core repository: objects, revisions, history, branches, the commit and checkout pipelines,
status, provenance, fsck/gc and notes storage. It imports no verb module (mfgit.api)."""
