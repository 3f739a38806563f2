"""The tests' shared helpers (fixtures live in tests/conftest.py, data in tests/fixtures and tests/alerts)."""
