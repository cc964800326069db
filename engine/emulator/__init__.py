"""A local stand-in for the Adobe Edge Network and the Sitecore Stream API, on loopback, so
every demo, test and benchmark runs without an account (docs/destinations.md, "The local
emulator").

* :class:`EmulatorServer`: in-process, on a background thread, for tests and ``--emulator``.
* :func:`serve`: in the foreground, for ``tagengine emulator``.
* :func:`create_app`: the ASGI app itself, for any ASGI server.

Dependencies: Starlette (routing, requests and responses for the ASGI app) and uvicorn (the
server); see :mod:`engine.emulator.app` for why.
"""

from engine.emulator.app import EmulatorApp, create_app
from engine.emulator.faults import Fault, FaultError
from engine.emulator.scopes import load_scopes
from engine.emulator.server import EmulatorServer, serve
from engine.emulator.state import EmulatorConfig, EmulatorState, RecordedRequest, emulator_config

__all__ = [
    "EmulatorApp",
    "EmulatorConfig",
    "EmulatorServer",
    "EmulatorState",
    "Fault",
    "FaultError",
    "RecordedRequest",
    "create_app",
    "emulator_config",
    "load_scopes",
    "serve",
]
