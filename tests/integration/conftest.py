"""Integration fixtures live in tests/conftest.py (shared with tests/reliability)."""

from tests.jobutil import TEST_MODEL, settings

__all__ = ["TEST_MODEL", "settings"]
