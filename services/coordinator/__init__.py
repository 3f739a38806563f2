"""The coordinator: durable multi-turn runs (Parrot-Ask collection, N-turn evaluation)."""
