"""The adversarial suite's one fixture: the battle, fought once per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from battle import Battle, fight
from scenario import Stage


@pytest.fixture(scope="module")
def battle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Battle]:
    """Set up, attack, settle, stop and verify (see battle.py); whatever still runs is killed."""
    stage = Stage(tmp_path_factory.mktemp("adversarial"))
    try:
        yield fight(stage)
    finally:
        stage.kill_all()
