"""Where built requests go. The dispatcher owns delivery; a transport only carries a request.

:class:`RecordingTransport` keeps every request and answers a canned success: it is what
``tagengine test`` and dry runs use, and what tests inject instead of a network.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol

from engine.destinations.base import Request

__all__ = ["RecordingTransport", "Response", "Transport"]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any = None


class Transport(Protocol):
    def send(self, request: Request) -> Response: ...


class RecordingTransport:
    """Records every request it is given; answers 200 (Edge) or 201 (Sitecore)."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._lock = threading.Lock()

    def send(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(request)
        return Response(201 if request.destination == "sitecore" else 200)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
