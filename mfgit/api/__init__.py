"""The verbs: Repository and friends. The CLI is a thin layer over this."""
