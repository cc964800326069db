"""Django: the collect endpoint as a middleware, configured from the settings::

    MIDDLEWARE = ["engine.web.django.CollectMiddleware", ...]   # first: the body unread
    TAGENGINE = {
        "rules": "rules/",                                       # Engine.from_path's path
        "engine": {"background": True, "outbox": "sends.db"},    # its other options
        "url_prefix": "/collect",                                # the default
        "collect": {"cors_origins": []},                         # CollectSettings fields
    }

(or ``"factory": "myapp.tagging.make_engine"``, a function returning the
:class:`~engine.Engine`, instead of ``rules`` and ``engine``). Requests under ``url_prefix``
go to the WSGI endpoint (:func:`engine.web.wsgi_app`) and never reach a view; the others
pass. The engine is made in the process that serves (on its first request, or by the
:mod:`engine.web.gunicorn` hooks) and closed when the process exits. ``engine()`` gives it to
the app's views. Django's own ``request.scheme`` (``SECURE_PROXY_SSL_HEADER``) decides
``Secure``.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
from http.cookies import Morsel
from typing import Any

from django.conf import settings as django_settings
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from engine.engine import Engine
from engine.web.core import CollectSettings
from engine.web.process import CollectApp, collect_app

__all__ = ["CollectMiddleware", "collect", "engine"]

_collect: CollectApp | None = None


def collect() -> CollectApp:
    """The endpoint of the ``TAGENGINE`` setting (one per process)."""
    global _collect
    if _collect is None:
        config: dict[str, Any] = dict(getattr(django_settings, "TAGENGINE", {}))
        factory: Callable[[], Engine]
        if "factory" in config:
            found = config["factory"]
            factory = import_string(found) if isinstance(found, str) else found
        else:
            rules, options = config.get("rules", "rules/"), dict(config.get("engine", {}))

            def factory() -> Engine:
                return Engine.from_path(rules, **options)

        _collect = collect_app(factory, CollectSettings(**config.get("collect", {})))
        atexit.register(_collect.process_engine.close)
    return _collect


def engine() -> Engine:
    """This process's engine (for the app's own views)."""
    return collect().engine


class CollectMiddleware:
    """Serves ``TAGENGINE["url_prefix"]`` (``/collect``) with the collect endpoint."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        config = getattr(django_settings, "TAGENGINE", {})
        self.prefix = str(config.get("url_prefix", "/collect")).rstrip("/")
        self.collect = collect()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            return self.get_response(request)
        environ = {
            **request.META,
            "wsgi.input": request,  # read through Django: works whether or not it was read
            "wsgi.url_scheme": request.scheme,
            "SCRIPT_NAME": request.META.get("SCRIPT_NAME", "") + self.prefix,
            "PATH_INFO": path[len(self.prefix) :] or "/",
        }
        answer: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> None:
            answer[:] = [int(status.split()[0]), headers]

        body = b"".join(self.collect.wsgi(environ, start_response))
        status, headers = answer
        response = HttpResponse(body, status=status)
        for key, value in headers:
            if key.lower() == "set-cookie":
                name, morsel = _morsel(value)
                response.cookies[name] = morsel
            elif key.lower() != "content-length":
                response[key] = value
        return response


def _morsel(header: str) -> tuple[str, Morsel[str]]:
    """A ``Set-Cookie`` value as Django's cookie jar holds it, its value as it was."""
    first, *attributes = header.split(";")
    name, _, value = first.strip().partition("=")
    morsel: Morsel[str] = Morsel()
    morsel.set(name, value, value)
    for attribute in attributes:
        key, _, setting = attribute.strip().partition("=")
        key = key.lower()
        if key in ("httponly", "secure"):
            morsel[key] = True
        elif key in ("max-age", "path", "domain", "samesite", "expires"):
            morsel[key] = setting
    return name, morsel
