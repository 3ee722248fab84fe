"""Remotes: the transport interface, its folder and S3 implementations, and push/fetch over it."""
