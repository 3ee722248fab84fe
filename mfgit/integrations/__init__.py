"""Integrations with the tools people already train in (transformers' Trainer).

The layer above the API: it uses only `mfgit.api` and below, and nothing
below it imports it, so transformers is imported only by code that asks for it.
"""
