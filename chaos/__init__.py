"""Chaos scenarios against the running processes (``make chaos``, docs/chaos.md)."""
