"""Presentation: the result documents of the verbs as text, DOT and HTML. Reads no repository."""
