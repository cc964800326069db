"""The floor benchmark (benchmarks/floor.py) stays honest: the requests its hand-written
Python sends for the shop journey are the engine's, byte for byte."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import floor
from benchmarks.floor import Floor, check_equivalence, load_journey


def test_the_floor_sends_what_the_engine_sends_over_the_journey() -> None:
    journey = load_journey()
    assert len(journey) == 31
    # Every Edge and Sitecore request of the journey: method, URL, headers and body bytes.
    assert check_equivalence(journey=journey) == 54


def test_a_floor_that_sends_something_else_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def renamed(state: dict[str, Any]) -> str:
        return "Another page"

    monkeypatch.setattr(Floor, "_page_name", staticmethod(renamed))
    with pytest.raises(AssertionError, match="push 1 "):
        check_equivalence()


def test_the_floor_prints_its_rows(capsys: pytest.CaptureFixture[str]) -> None:
    floor.run(quick=True, rounds=1, journeys=1)
    shown = capsys.readouterr().out
    assert "54 requests byte-identical" in shown
    assert "dry run:" in shown and "target <= 1.5x" in shown
    assert "background:" in shown and "target <= 1.7x" in shown
