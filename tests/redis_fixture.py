"""A real ``redis-server`` on a free loopback port, for the tests of the Redis stores.

``redis`` is one server for the whole run, emptied (FLUSHALL) before each test that asks for
it; ``RedisServer`` starts one of a test's own (with AOF, to be killed and restarted). The
binary comes from Debian's ``redis-server`` package, which ``make test`` installs when it is
missing; a run without it fails loudly rather than skipping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis as redis_py

__all__ = ["RedisServer", "redis_server", "redis_url"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """``redis-server`` on 127.0.0.1 in a folder of its own; ``aof`` turns on the append-only
    file (``appendfsync``: ``everysec`` or ``always``). :meth:`stop` shuts it down cleanly
    (SIGTERM: the AOF is flushed), :meth:`kill` with SIGKILL; :meth:`start` again on the same
    port and folder."""

    def __init__(
        self,
        *,
        aof: str | None = None,
        port: int | None = None,
        own_session: bool = False,
        options: Sequence[str] = (),
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.binary = binary
        self.port = port or free_port()
        self.aof = aof
        self.own_session = own_session
        self.options = list(options)  # more redis-server options, e.g. ["--maxmemory", "1gb"]
        self.folder = Path(tempfile.mkdtemp(prefix="tagengine-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis_py.Redis:
        return redis_py.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", self.aof]
        else:
            args += ["--appendonly", "no"]
        args += self.options
        # A process group of its own (a Ctrl-C at the terminal does not reach it) but, unless
        # asked, not a session of its own: with the kernel's autogroup scheduling
        # (sched_autogroup_enabled, on by default), CPU is shared between sessions before
        # processes, and a redis-server in a session apart from the processes it serves gets
        # the CPU late: two producers on 2 CPUs then scale ~1.6x instead of ~1.8x
        # (benchmarks/scaleout.py measures both).
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            process_group=None if self.own_session else 0,
            start_new_session=self.own_session,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return self
            except redis_py.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def _end(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


_shared: RedisServer | None = None


@pytest.fixture
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """The run's shared server, running and empty."""
    global _shared
    if _shared is None:
        _shared = RedisServer()
        request.config.add_cleanup(_shared.close)
    if _shared.process is None or _shared.process.poll() is not None:
        _shared.start()
    _shared.client().flushall()
    yield _shared


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
