"""Parrot: multi-turn instruction following for LLMs, as a platform."""

__version__ = "0.1.0"
