"""The collect endpoint as a WSGI app (Flask, Django, any WSGI server)::

    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/collect": engine.web.wsgi_app(engine)})

The body is read up to ``max_body`` (a longer one is refused with 413 without reading it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from engine.web.core import CollectCore, CollectRequest

__all__ = ["CollectWSGI"]

StartResponse = Callable[..., Any]

_REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


class CollectWSGI:
    """A WSGI app over a :class:`~engine.web.core.CollectCore`."""

    def __init__(self, core: CollectCore) -> None:
        self.core = core

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        limit = self.core.settings.max_body
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        stream = environ.get("wsgi.input")
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        too_large = length > limit
        body = b""
        if stream is not None and not too_large:
            if length > 0:
                body = stream.read(length)
            elif chunked:  # the server de-chunks; read one byte past the limit to know
                body = stream.read(limit + 1)
                too_large = len(body) > limit
        headers = [
            (key[5:].replace("_", "-").title(), value)
            for key, value in environ.items()
            if key.startswith("HTTP_")
        ]
        if environ.get("CONTENT_TYPE"):
            headers.append(("Content-Type", environ["CONTENT_TYPE"]))
        request = CollectRequest(
            method=environ.get("REQUEST_METHOD", "GET"),
            path=environ.get("PATH_INFO", "") or "/",
            headers=headers,
            body=b"" if too_large else body,
            client=environ.get("REMOTE_ADDR"),
            scheme=environ.get("wsgi.url_scheme", "http"),
            too_large=too_large,
        )
        response = self.core.handle(request)
        reason = _REASONS.get(response.status, "")
        headers_out = [*response.headers, ("Content-Length", str(len(response.body)))]
        start_response(f"{response.status} {reason}".strip(), headers_out)
        return [response.body]
