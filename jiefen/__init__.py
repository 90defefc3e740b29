"""Jiefen application wiring: the composition root and the `jiefen` command."""
