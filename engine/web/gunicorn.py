"""gunicorn hooks: one engine per worker process, made when the worker starts and closed
when it exits. In ``gunicorn.conf.py``::

    from engine.web.gunicorn import post_fork, post_worker_init, worker_exit  # noqa: F401

The app gives its engine as a factory (``engine.web.starlette.TagEngine(make_engine)``,
``engine.web.flask.init_app(app, make_engine)``, Django's ``TAGENGINE`` setting): an engine's
threads, journal and HTTP client belong to the process that made it, so none is shared
across the fork. ``post_fork`` makes the engines of an app loaded before the fork
(``--preload``), ``post_worker_init`` those of an app the worker loaded itself, and
``worker_exit`` closes them (what is not delivered stays in the outbox). With
``deliver=False`` the workers only push and ``tagengine deliver`` delivers.
"""

from __future__ import annotations

import logging
from typing import Any

from engine.web.process import living

__all__ = ["post_fork", "post_worker_init", "worker_exit"]

log = logging.getLogger("engine.web")


def _start() -> None:
    for holder in living():
        if holder.forked:
            log.warning(
                "tagengine: an engine made before gunicorn forked is shared by its workers; "
                "give the integration a factory (a function making the engine) instead"
            )
        holder.start()


def post_fork(server: Any, worker: Any) -> None:
    """In a new worker: make the engines of an app loaded before the fork."""
    _start()


def post_worker_init(worker: Any) -> None:
    """Once the worker has loaded the app: make its engines (before the first request)."""
    _start()


def worker_exit(server: Any, worker: Any) -> None:
    """The worker is exiting: close its engines."""
    for holder in living():
        holder.close()
