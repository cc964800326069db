"""pytest fixtures that give a test the local emulator on a free loopback port.

tests/conftest.py registers this module as a plugin, so every test module can ask for them::

    def test_send(emulator: EmulatorServer) -> None:
        httpx.post(f"{emulator.url}/ee/v2/interact?datastreamId=ds", json={"event": {"xdm": {}}})
        assert emulator.requests()[0].status == 200

``emulator`` is one server shared by the whole test run (starting one per test would cost
~0.15 s each), reset before every test: no recorded requests, faults, tokens, visitors or
browser ids, the default configuration. A test that stops it gets it restarted, at the same
URL, for the next one. ``fresh_emulator`` is a server of the test's own, stopped after it:
for tests where traffic left over from an earlier test must not reach the same server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.emulator import EmulatorServer

__all__ = ["emulator", "fresh_emulator"]

_shared: EmulatorServer | None = None


def _shared_server(config: pytest.Config) -> EmulatorServer:
    global _shared
    if _shared is None:
        server = EmulatorServer()
        config.add_cleanup(server.stop)
        _shared = server
    return _shared


@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> Iterator[EmulatorServer]:
    """The shared emulator, reset and running."""
    server = _shared_server(request.config)
    server.reset()
    server.start()  # no-op when running; restarts it (same port) if a test stopped it
    yield server
    server.clear_faults()  # so a fault left active cannot slow the run's teardown


@pytest.fixture
def fresh_emulator() -> Iterator[EmulatorServer]:
    """An emulator of this test's own, on its own free port."""
    with EmulatorServer() as server:
        yield server
