"""Flask: the collect endpoint beside the app's routes, as an extension::

    from flask import Flask
    from engine import Engine
    from engine.web.flask import init_app

    app = Flask(__name__)
    init_app(app, lambda: Engine.from_path("rules/", background=True, outbox="sends.db"))

``init_app(app, engine, url_prefix="/collect", **options)`` puts the WSGI endpoint under
``url_prefix`` (werkzeug's ``DispatcherMiddleware``, in front of ``app.wsgi_app``: the body
reaches the endpoint unread) and closes the engine when the process exits. ``engine`` is an
engine or a factory, called in each process on its first request (a forked worker makes its
own; :mod:`engine.web.gunicorn` makes it when the worker starts).
``app.extensions["tagengine"]`` is the :class:`~engine.web.process.CollectApp`; its
``engine`` is this process's engine. Keyword options are
:class:`~engine.web.core.CollectSettings` fields.
"""

from __future__ import annotations

import atexit
from typing import Any

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from engine.engine import Engine
from engine.web.core import CollectSettings
from engine.web.process import CollectApp, EngineFactory, ProcessEngine, collect_app

__all__ = ["init_app"]


def init_app(
    app: Flask,
    engine: Engine | EngineFactory | ProcessEngine,
    url_prefix: str = "/collect",
    settings: CollectSettings | None = None,
    **options: Any,
) -> CollectApp:
    """Serve the collect endpoint at ``url_prefix`` of ``app``; returns it."""
    collect = collect_app(engine, settings, **options)
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {url_prefix.rstrip("/"): collect.wsgi}
    )
    app.extensions["tagengine"] = collect
    atexit.register(collect.process_engine.close)
    return collect
