"""Prometheus metrics of an :class:`~engine.Engine` and its collect endpoint, with
``prometheus-client``: :func:`metrics_for` (one :class:`EngineMetrics` per engine, in a
registry of its own unless the app gives one) and the apps that export them
(:func:`metrics_asgi_app`, :func:`metrics_wsgi_app`; or ``CollectSettings(metrics_path=…)``).

Counters (``_total`` is added on export):

- ``tagengine_collect_requests_total{status}``: ``POST /collect`` answers, by HTTP status;
- ``tagengine_pushes_total{outcome}``: the collect endpoint's pushes: ``processed``,
  ``duplicate`` (a push id seen before), ``invalid`` (a malformed push), ``error`` (the
  engine could not take it), ``backlog_full`` (answered 503), ``bot`` (not processed);
- ``tagengine_rule_outcomes_total{rule, status}``: each rule's status on each processed push
  (``fired``, ``condition_not_met``, ``blocked``, ``sampled_out``, ``limited``, ``failed``);
  rules are bounded by the ruleset, so the label set is too;
- ``tagengine_sends_total{destination, status}``: sends delivered (or given up on), by
  ``edge``/``sitecore`` and the HTTP status of the last answer (``error`` when none came);
- ``tagengine_delivery_retries_total{destination}``: attempts beyond the first;
- ``tagengine_bot_requests_total{action}``: requests from bots, ``dropped`` or ``allowed``;
- ``tagengine_rate_limited_requests_total{scope}``: requests refused with 429, ``ip`` or
  ``visitor``.

Histogram: ``tagengine_delivery_duration_seconds{destination}``, the time a send's delivery
took (its attempts and the waits between them).

Gauges, read from the engine when scraped: ``tagengine_outbox_pending``,
``tagengine_outbox_inflight``, ``tagengine_outbox_oldest_age_seconds`` (0 when empty),
``tagengine_outbox_dead`` (dead letters), ``tagengine_ruleset_info{version}`` and
``tagengine_ruleset_reload_failed`` (1 while the last reload failed).

Sends are heard through :meth:`Engine.add_result_hook` (background mode: when delivered or
buried; wait mode: when answered); pushes, rules, bots and limits are counted by the collect
endpoint (pushes an app makes itself are not in ``tagengine_pushes_total``).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    make_asgi_app,
    make_wsgi_app,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.errors import EngineError

if TYPE_CHECKING:
    from engine.engine import Engine
    from engine.results import PushResult, Send

__all__ = [
    "CONTENT_TYPE_LATEST",
    "EngineMetrics",
    "metrics_asgi_app",
    "metrics_for",
    "metrics_wsgi_app",
]

log = logging.getLogger("engine.web")

DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_METRICS: weakref.WeakKeyDictionary[Engine, EngineMetrics] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class _Backlog(Collector):
    """The outbox's backlog and the ruleset, read at each scrape (the engine held weakly)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)

    def describe(self) -> Iterable[Metric]:
        return []  # collected at scrape time only (no help text needed at registration)

    def collect(self) -> Iterator[Metric]:
        engine = self._engine()
        if engine is None:
            return
        info = GaugeMetricFamily(
            "tagengine_ruleset_info", "The ruleset serving, by version.", labels=["version"]
        )
        info.add_metric([engine.ruleset.version], 1.0)
        yield info
        yield GaugeMetricFamily(
            "tagengine_ruleset_reload_failed",
            "1 while the last reload of the rules failed (the previous rules serve).",
            value=float(engine.ruleset_error is not None),
        )
        try:
            backlog = engine.backlog()
        except EngineError as exc:
            log.debug("metrics: the outbox cannot be read: %s", exc)
            return
        if backlog is None:
            return
        for name, text, value in (
            ("tagengine_outbox_pending", "Sends not delivered yet.", backlog.pending),
            ("tagengine_outbox_inflight", "Sends being delivered now.", backlog.inflight),
            (
                "tagengine_outbox_oldest_age_seconds",
                "Age of the oldest send not delivered yet (0 when none).",
                backlog.oldest_age or 0.0,
            ),
            ("tagengine_outbox_dead", "Dead letters: sends given up on.", backlog.dead),
        ):
            yield GaugeMetricFamily(name, text, value=float(value))


class EngineMetrics:
    """The metrics of one engine, in ``registry`` (see the module docstring)."""

    def __init__(self, engine: Engine, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tagengine_collect_requests",
            "POST /collect answers, by HTTP status.",
            ["status"],
            registry=r,
        )
        self.pushes = Counter(
            "tagengine_pushes",
            "Pushes the collect endpoint took, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.rules = Counter(
            "tagengine_rule_outcomes",
            "Each rule's status on each processed push.",
            ["rule", "status"],
            registry=r,
        )
        self.sends = Counter(
            "tagengine_sends",
            "Sends delivered or given up on, by destination and HTTP status ('error': none).",
            ["destination", "status"],
            registry=r,
        )
        self.retries = Counter(
            "tagengine_delivery_retries",
            "Delivery attempts beyond a send's first.",
            ["destination"],
            registry=r,
        )
        self.latency = Histogram(
            "tagengine_delivery_duration_seconds",
            "Time a send's delivery took (its attempts and the waits between them).",
            ["destination"],
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.bots = Counter(
            "tagengine_bot_requests",
            "Collect requests from bots (user-agent list), dropped or allowed.",
            ["action"],
            registry=r,
        )
        self.limited = Counter(
            "tagengine_rate_limited_requests",
            "Collect requests refused with 429, by the limit that refused them.",
            ["scope"],
            registry=r,
        )
        r.register(_Backlog(engine))
        # Children by label values: labels() takes a lock and builds a key every time.
        self._children: dict[tuple[str, ...], Any] = {}
        engine.add_result_hook(self.heard)

    def _child(self, family: Any, *values: str) -> Any:
        key = (family._name, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*values)
        return child

    # ------------------------------------------------------------------ the endpoint's
    def request(self, status: int) -> None:
        self._child(self.requests, str(status)).inc()

    def push(self, outcome: str, result: PushResult | None = None) -> None:
        self._child(self.pushes, outcome).inc()
        if result is None or result.duplicate:
            return
        for each in (result, *result.followups):
            for rule in each.rules:
                self._child(self.rules, rule.rule, rule.status).inc()

    def bot(self, action: str) -> None:
        self._child(self.bots, action).inc()

    def rate_limited(self, scope: str) -> None:
        self._child(self.limited, scope).inc()

    # ------------------------------------------------------------------ deliveries
    def heard(self, session_id: str, send: Send) -> None:
        """An :meth:`Engine.add_result_hook` hook: one send delivered or given up on."""
        if send.consent is not None:
            return  # held or dropped for consent: not delivered
        destination = send.destination
        status = str(send.status) if send.status is not None else "error"
        self._child(self.sends, destination, status).inc()
        if send.attempts > 1:
            self._child(self.retries, destination).inc(send.attempts - 1)
        if send.duration is not None:
            self._child(self.latency, destination).observe(send.duration)

    def exposition(self) -> bytes:
        """The registry in Prometheus's text format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)


def metrics_for(engine: Engine, registry: CollectorRegistry | None = None) -> EngineMetrics:
    """The engine's :class:`EngineMetrics`, made on the first call (in ``registry``, or a
    registry of its own: several engines, or tests, never collide); later calls return the
    same one (``registry`` must then be the same or omitted)."""
    with _LOCK:
        known = _METRICS.get(engine)
        if known is None:
            known = _METRICS[engine] = EngineMetrics(engine, registry)
        elif registry is not None and registry is not known.registry:
            raise ValueError("this engine's metrics are already in another registry")
        return known


def metrics_asgi_app(
    engine: Engine, registry: CollectorRegistry | None = None
) -> Callable[..., Any]:
    """An ASGI app answering the engine's metrics (``app.mount("/metrics", …)``)."""
    return make_asgi_app(metrics_for(engine, registry).registry)


def metrics_wsgi_app(
    engine: Engine, registry: CollectorRegistry | None = None
) -> Callable[..., Any]:
    """A WSGI app answering the engine's metrics."""
    return make_wsgi_app(metrics_for(engine, registry).registry)
