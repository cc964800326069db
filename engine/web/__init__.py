"""Server-side tagging in a web app: the collect endpoint, as an ASGI or a WSGI app over one
core (:mod:`engine.web.core`), and the browser forwarder it serves (``tagengine.js``).

::

    from engine.web import asgi_app
    app.mount("/collect", asgi_app(engine, cors_origins=["https://shop.example.com"]))
"""

from __future__ import annotations

from typing import Any

from engine.engine import Engine
from engine.web.asgi import CollectASGI
from engine.web.core import CollectCore, CollectSettings
from engine.web.metrics import metrics_asgi_app, metrics_for, metrics_wsgi_app
from engine.web.wsgi import CollectWSGI

__all__ = [
    "CollectSettings",
    "asgi_app",
    "metrics_asgi_app",
    "metrics_for",
    "metrics_wsgi_app",
    "wsgi_app",
]


def asgi_app(
    engine: Engine, settings: CollectSettings | None = None, **options: Any
) -> CollectASGI:
    """The collect endpoint for Starlette/FastAPI: ``options`` are
    :class:`~engine.web.core.CollectSettings` fields (or give ``settings``)."""
    return CollectASGI(CollectCore(engine, _settings(settings, options)))


def wsgi_app(
    engine: Engine, settings: CollectSettings | None = None, **options: Any
) -> CollectWSGI:
    """The collect endpoint for Flask/Django (WSGI); as :func:`asgi_app`."""
    return CollectWSGI(CollectCore(engine, _settings(settings, options)))


def _settings(settings: CollectSettings | None, options: dict[str, Any]) -> CollectSettings:
    if settings is not None and options:
        raise TypeError("give either settings or keyword options, not both")
    return settings if settings is not None else CollectSettings(**options)
