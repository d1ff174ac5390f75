"""Fixtures of the contract tests (helpers live in `contract_kit.py`)."""

from __future__ import annotations

import pytest
from contract_kit import Kit


@pytest.fixture
def kit(world):
    """The session deployment inside a snapshot, with jobs driven by hand (rolled back after the test)."""
    return Kit(world)
