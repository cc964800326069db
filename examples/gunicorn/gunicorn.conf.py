"""Several gunicorn workers serving the Flask example, delivery in a worker of its own. From
the project root, one command:

    .venv/bin/gunicorn -c examples/gunicorn/gunicorn.conf.py      # BIND, WORKERS to change

The workers only push (``deliver=False``): sessions and outbox in Redis (``TAGENGINE_REDIS``,
or a ``redis-server`` started here on a free port), visitor cookies signed with one
``TAGENGINE_COOKIE_SECRET`` (made here when unset), and a ``tagengine deliver`` process
delivers to the emulator (``TAGENGINE_EMULATOR``, or one started here). This file starts
and stops those beside the master for the example's sake; in production they run under the
supervisor (systemd, containers of their own). The engine hooks below make one engine per
worker and close it when the worker exits.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from engine.loader import load_ruleset
from engine.web.gunicorn import post_fork, post_worker_init, worker_exit

__all__ = ["on_exit", "on_starting", "post_fork", "post_worker_init", "worker_exit"]

wsgi_app = "examples.flask.app:app"
bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WORKERS", "2"))

_children: list[subprocess.Popen[bytes]] = []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(args: list[str], port: int) -> None:
    process = subprocess.Popen(args, process_group=0)  # Ctrl-C reaches the master only
    _children.append(process)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args[0]} did not start on port {port}") from None
            time.sleep(0.05)


def on_starting(server: Any) -> None:
    env = os.environ
    env.setdefault("TAGENGINE_COOKIE_SECRET", secrets.token_hex(32))
    rules = env.setdefault("TAGENGINE_RULES", "rules/")
    if not env.get("TAGENGINE_REDIS"):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("set TAGENGINE_REDIS=redis://… or install redis-server")
        port = _free_port()
        folder = tempfile.mkdtemp(prefix="tagengine-example-redis-")
        _start([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder,
                "--save", "", "--appendonly", "yes"], port)  # fmt: skip
        env["TAGENGINE_REDIS"] = f"redis://127.0.0.1:{port}/0"
    redis = env["TAGENGINE_SESSIONS"] = env["TAGENGINE_OUTBOX"] = env["TAGENGINE_REDIS"]
    env["TAGENGINE_DELIVER"] = "0"
    if not env.get("TAGENGINE_EMULATOR"):
        port = _free_port()
        # Told the rules' ids, as Adobe and Sitecore know them: strict, and its state entries
        # named after the rules' org (so the answers carry the visitor's kndctr_* cookies).
        ruleset = load_ruleset(rules)
        ids: list[str] = []
        if ruleset.edge is not None and ruleset.edge.org:
            ids += ["--org", ruleset.edge.org]
        if ruleset.edge is not None and ruleset.edge.datastream:
            ids += ["--datastream", ruleset.edge.datastream]
        if ruleset.sitecore is not None and ruleset.sitecore.client_key:
            ids += ["--client-key", ruleset.sitecore.client_key]
        _start([sys.executable, "-m", "engine", "emulator", "--port", str(port), *ids], port)
        env["TAGENGINE_EMULATOR"] = f"http://127.0.0.1:{port}"
    server.log.info("emulator on %s, sessions and outbox on %s", env["TAGENGINE_EMULATOR"], redis)
    deliver = [
        "deliver",
        "--outbox",
        redis,
        "--rules",
        rules,
        "--emulator",
        env["TAGENGINE_EMULATOR"],
    ]
    _children.append(subprocess.Popen([sys.executable, "-m", "engine", *deliver], process_group=0))


def on_exit(server: Any) -> None:
    for process in reversed(_children):  # the delivery worker first: it finishes its sends
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
