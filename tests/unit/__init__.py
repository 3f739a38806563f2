"""Tests at the level of pure functions: no server, no subprocess of parrot."""
