"""Running the emulator: :class:`EmulatorServer` in a background thread (tests, demos,
``tagengine run --emulator``) and :func:`serve` in the foreground (``tagengine emulator``)."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import uvicorn

from engine.emulator.app import EmulatorApp, create_app
from engine.emulator.faults import Fault
from engine.emulator.guard import is_loopback_address
from engine.emulator.scopes import load_scopes
from engine.emulator.state import EmulatorConfig, EmulatorState, RecordedRequest

__all__ = ["EmulatorServer", "serve"]

logger = logging.getLogger("tagengine.emulator")


def _uvicorn_config(app: EmulatorApp, **extra: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        # Pinned rather than "auto", so the emulator behaves the same whatever optional
        # accelerators are installed; dropped connections rely on the h11 protocol's transport.
        http="h11",
        loop="asyncio",
        ws="none",
        lifespan="off",
        interface="asgi3",
        proxy_headers=False,
        server_header=False,
        access_log=False,
        # Longer than httpx's 5 s pool expiry: the client closes idle connections first, so a
        # reused keep-alive connection never races the server closing it.
        timeout_keep_alive=75,
        # A backstop only: delayed requests drop as soon as the server stops (EmulatorApp).
        timeout_graceful_shutdown=1,
        **extra,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets that
    # say so, and without it Nagle holds each response body back ~40 ms behind its headers.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # Lets a stopped emulator be restarted on the same port while old connections sit in
        # TIME_WAIT (the "endpoint down, then back" tests).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def serve_in_thread(
    server: uvicorn.Server, sock: socket.socket, name: str, timeout: float, what: str
) -> threading.Thread:
    """Run ``server`` on ``sock`` in a daemon thread; return once it accepts connections.
    :class:`RuntimeError` naming ``what`` when it does not start within ``timeout``."""
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    host, port = sock.getsockname()[:2]
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(1)
            sock.close()
            raise RuntimeError(f"{what} did not start on {host}:{port}")
        time.sleep(0.005)
    # The loop is listening; one real connection confirms it end to end.
    with socket.create_connection((host, port), timeout=timeout):
        pass
    return thread


def stop_thread(server: uvicorn.Server, thread: threading.Thread, timeout: float) -> bool:
    """Ask ``server`` to exit, then force it; true when its thread ended within ``timeout``."""
    server.should_exit = True
    thread.join(timeout / 2)
    if thread.is_alive():
        server.force_exit = True
        thread.join(timeout / 2)
    return not thread.is_alive()


class ThreadedServer:
    """What a uvicorn server run on a thread of its own (the emulator, the dev server)
    shares: its URL, whether it runs, and ``with`` for :meth:`start` and :meth:`stop`."""

    host: str
    port: int
    _thread: threading.Thread | None

    @property
    def url(self) -> str:
        """``http://host:port`` (IPv6 hosts bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmulatorServer(ThreadedServer):
    """The emulator on a background thread, as a context manager::

        with EmulatorServer() as emulator:
            httpx.post(f"{emulator.url}/ee/v2/interact?datastreamId=ds", json=...)
            assert emulator.requests()[0].status == 200

    ``port=0`` picks a free port; after the first start the server keeps that port, so
    :meth:`stop` then :meth:`start` brings it back at the same URL with its state (recorded
    requests, visitors, browser ids) intact. ``config`` and ``scopes`` are as for
    :func:`~engine.emulator.app.create_app`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        config: EmulatorConfig | None = None,
        scopes: Path | None = None,
        seed: int | None = None,
        startup_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        if scopes is not None:  # part of the initial configuration, so reset() keeps it
            config = dataclasses.replace(config or EmulatorConfig(), scopes=load_scopes(scopes))
        self.state = EmulatorState(config, seed=seed)
        self.app = create_app(state=self.state)
        self._startup_timeout = startup_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle
    def start(self) -> Self:
        """Bind, start serving on a daemon thread, and return once connections are accepted;
        :class:`RuntimeError` when it does not start within ``startup_timeout``."""
        if self.running:
            return self
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self.app.resume()
        # log_config=None: an in-process server must not reconfigure the host's logging;
        # uvicorn's records still reach the root logger (errors show, as any library's do).
        server = uvicorn.Server(_uvicorn_config(self.app, log_config=None, log_level=None))
        self._server = server
        try:
            self._thread = serve_in_thread(
                server,
                sock,
                f"tagengine-emulator-{self.port}",
                self._startup_timeout,
                "the emulator",
            )
        except RuntimeError:
            self._server = None
            raise
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving within ``timeout`` seconds: idle connections are closed, requests
        held by an injected delay are dropped, in-flight ones get a moment to finish. The
        state is kept. :class:`RuntimeError` if the thread does not end in time."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self.app.interrupt()
        stopped = stop_thread(server, thread, timeout)
        self._server = self._thread = None
        if not stopped:
            raise RuntimeError(f"the emulator on {self.url} did not stop within {timeout} s")

    # -------------------------------------------------------------- inspection and control
    def requests(self, path: str | None = None) -> list[RecordedRequest]:
        """The requests received, oldest first (only those under ``path`` when given)."""
        return self.state.requests(path)

    def clear(self) -> None:
        """Forget the recorded requests."""
        self.state.clear_requests()

    def reset(self) -> None:
        """Forget everything: requests, faults, tokens, visitors, browser ids, and
        configuration changes made with :meth:`configure`."""
        self.state.reset()

    def set_faults(self, *faults: Fault | Mapping[str, Any], seed: int | None = None) -> None:
        """Replace the active fault rules (none: remove them). Each is a
        :class:`~engine.emulator.faults.Fault` or a mapping with the same keys, e.g.
        ``set_faults({"status": 503, "retry_after": 1, "rate": 0.5}, seed=7)``."""
        self.state.set_faults(_faults(faults), seed=seed)

    def clear_faults(self) -> None:
        self.state.set_faults([])

    def expire_tokens(self, token: str | None = None) -> int:
        """Expire one issued access token, or all; returns how many were still valid."""
        return self.state.expire_tokens(token)

    def configure(self, *, initial: bool = False, **changes: Any) -> EmulatorConfig:
        """Change configuration fields (see :class:`~engine.emulator.state.EmulatorConfig`)
        until :meth:`reset`, or with ``initial`` for good."""
        return self.state.configure(initial=initial, **changes)

    def visitors(self) -> dict[str, dict[str, Any]]:
        """ECID → ``{"first_seen", "interacts"}`` for each visitor identified so far."""
        return self.state.visitors()

    def browsers(self) -> dict[str, dict[str, Any]]:
        """Sitecore browser id → ``{"customer_ref", "events"}``."""
        return self.state.browsers()

    def consents(self) -> dict[str, str]:
        """Identity (``ECID:<id>``, ``FPID:<id>``, …) → ``"in"``/``"out"``, as recorded by
        ``POST /ee/v1/privacy/set-consent``."""
        return self.state.consents()


def _faults(items: Iterable[Fault | Mapping[str, Any]]) -> list[Fault]:
    return [f if isinstance(f, Fault) else Fault.from_mapping(f) for f in items]


def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    scopes: Path | None = None,
    *,
    config: EmulatorConfig | None = None,
    log_level: str = "info",
) -> None:
    """Serve the emulator in the foreground until Ctrl+C (then return normally) or SIGTERM
    (then, after a graceful shutdown, the signal's default action: the process ends).
    :class:`ValueError` for an invalid scopes file; :class:`OSError` when the address cannot
    be bound."""
    app = create_app(config, scopes=scopes)
    if not _is_loopback(host):
        logger.warning(
            "the emulator is reachable from other machines on %s; requests arriving there are "
            "not checked for a loopback Host",
            host,
        )
    # uvicorn binds (and logs "Uvicorn running on …") and handles the signals itself here.
    server = uvicorn.Server(_uvicorn_config(app, log_level=log_level, host=host, port=port))
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits when it cannot bind (it has logged why)
        raise OSError(f"the emulator could not listen on {host}:{port}") from exc
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully, then re-raises the SIGINT it caught; for a command
        # line tool Ctrl+C is the normal way to stop, not an error.
        pass


def _is_loopback(host: str) -> bool:
    return is_loopback_address(host)
