"""Django with the collect endpoint at /collect (engine.web.django.CollectMiddleware). From
the project root, one command:

    .venv/bin/python -m django runserver 8000 --settings=examples.django.settings

then open http://127.0.0.1:8000/, or
``curl -A Mozilla/5.0 --json '{"event": "page.view", "page": {"name": "Home"}}'
localhost:8000/collect/`` (a browser's user agent: curl's is a bot's, whose pushes are
answered ``"bot": true`` and not processed).
Without ``TAGENGINE_EMULATOR`` the sends go to an emulator the serving process starts (its
URL is logged). Behind gunicorn: ``gunicorn examples.django.wsgi`` with the hooks of
examples/gunicorn/gunicorn.conf.py.
"""

from __future__ import annotations

import os

from examples.common import collect_options

DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "tagengine-example-not-secret")
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
ROOT_URLCONF = "examples.django.urls"
WSGI_APPLICATION = "examples.django.wsgi.application"
INSTALLED_APPS: list[str] = []
USE_TZ = True

MIDDLEWARE = [
    "engine.web.django.CollectMiddleware",  # first: /collect never reaches a view
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

TAGENGINE = {
    # Or "rules": "rules/" and "engine": {"background": True, "outbox": "sends.db"}.
    "factory": "examples.common.make_engine",
    "url_prefix": "/collect",
    "collect": collect_options(),  # CollectSettings fields: cors_origins, cookie_domain, …
}

LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"examples": {"handlers": ["console"], "level": "INFO"}},
}
