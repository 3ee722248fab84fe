"""The commands of `mfgit`, one module per area; each lists its commands in COMMANDS."""
