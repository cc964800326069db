"""Prometheus metrics of an engine and its collect endpoint (engine/web/metrics.py), scraped
as Prometheus would, with deliveries to the emulator over loopback."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from engine import Engine
from engine.clients import RetryPolicy
from engine.emulator import EmulatorServer, Fault
from engine.results import Send
from engine.web import asgi_app, metrics_asgi_app, metrics_for, metrics_wsgi_app
from tests.test_collect_guard import CHROME, GOOGLEBOT, PUSH, SECRET, ruleset

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, total_timeout=5.0)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition: (name, sorted labels) to value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


async def exchange(app: Any, *requests: tuple[str, str, dict[str, Any]]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
        return [await client.request(method, path, **kw) for method, path, kw in requests]


def browser(**kw: Any) -> dict[str, Any]:
    return {"json": PUSH, "headers": {"User-Agent": CHROME}, **kw}


@pytest.fixture
def wait_engine(emulator: EmulatorServer) -> Iterator[Engine]:
    with Engine(ruleset(), edge_url=emulator.url, policy=FAST) as engine:
        yield engine


def test_each_engine_has_a_registry_of_its_own(wait_engine: Engine) -> None:
    with Engine(ruleset(), dry_run=True) as other:
        mine, theirs = metrics_for(wait_engine), metrics_for(other)
        assert mine.registry is not theirs.registry
        assert metrics_for(wait_engine) is mine
        assert mine.registry is not prometheus_client.REGISTRY
        given = CollectorRegistry()
        with Engine(ruleset(), dry_run=True) as third:
            assert metrics_for(third, given).registry is given
            assert metrics_for(third) is metrics_for(third, given)
            with pytest.raises(ValueError, match="another registry"):
                metrics_for(third, CollectorRegistry())
    default = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "tagengine_" not in default


def test_the_endpoint_counts_pushes_rules_sends_bots_and_limits(wait_engine: Engine) -> None:
    app = asgi_app(
        wait_engine,
        secret=SECRET,
        identity="none",
        metrics_path="/metrics",
        rate_limit_ip="4/minute",
    )
    batch = {"pushes": [{"id": "a", "push": PUSH}, {"id": "b", "push": "not an object"}]}
    responses = asyncio.run(
        exchange(
            app,
            ("POST", "/", browser()),
            ("POST", "/", browser(json=batch)),
            ("POST", "/", {"json": PUSH, "headers": {"User-Agent": GOOGLEBOT}}),
            ("POST", "/", browser(json={"event": "other"})),
            ("POST", "/", browser()),  # the 5th from this IP: 429
            ("GET", "/metrics", {}),
        )
    )
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 429, 200]
    scrape = responses[-1]
    assert scrape.headers["content-type"].startswith("text/plain")
    found = samples(scrape.text)
    assert value(found, "tagengine_pushes_total", outcome="processed") == 3
    assert value(found, "tagengine_pushes_total", outcome="invalid") == 1
    assert value(found, "tagengine_pushes_total", outcome="bot") == 1
    assert value(found, "tagengine_rule_outcomes_total", rule="Page view", status="fired") == 2
    assert (
        value(found, "tagengine_rule_outcomes_total", rule="Page view", status="condition_not_met")
        is None
    )  # a rule an event does not trigger is not considered
    assert value(found, "tagengine_sends_total", destination="edge", status="200") == 2
    assert value(found, "tagengine_delivery_duration_seconds_count", destination="edge") == 2
    assert value(found, "tagengine_bot_requests_total", action="dropped") == 1
    assert value(found, "tagengine_rate_limited_requests_total", scope="ip") == 1
    assert value(found, "tagengine_collect_requests_total", status="200") == 4
    assert value(found, "tagengine_collect_requests_total", status="429") == 1
    assert value(found, "tagengine_ruleset_info", version=wait_engine.ruleset.version) == 1
    assert value(found, "tagengine_ruleset_reload_failed") == 0
    # No outbox in wait mode: no backlog gauges.
    assert value(found, "tagengine_outbox_pending") is None


def test_background_deliveries_retries_and_backlog(
    tmp_path: Path, fresh_emulator: EmulatorServer
) -> None:
    heard: list[tuple[str, Send]] = []
    lock = threading.Lock()

    def on_result(session_id: str, send: Send) -> None:
        with lock:
            heard.append((session_id, send))

    fresh_emulator.set_faults(Fault(status=503, count=1, path="/ee/"))
    with Engine(
        ruleset(),
        background=True,
        outbox=tmp_path / "sends.db",
        edge_url=fresh_emulator.url,
        policy=FAST,
        on_result=on_result,
    ) as engine:
        app = asgi_app(engine, secret=SECRET, identity="none")
        responses = asyncio.run(exchange(app, ("POST", "/", browser())))
        assert responses[0].status_code == 200
        assert engine.flush(5)
        found = samples(metrics_for(engine).exposition().decode())
        assert len(heard) == 1, "on_result still hears every send"
        assert value(found, "tagengine_sends_total", destination="edge", status="200") == 1
        assert value(found, "tagengine_delivery_retries_total", destination="edge") == 1
        assert value(found, "tagengine_delivery_duration_seconds_count", destination="edge") == 1
        assert value(found, "tagengine_outbox_pending") == 0
        assert value(found, "tagengine_outbox_inflight") == 0
        assert value(found, "tagengine_outbox_oldest_age_seconds") == 0
        assert value(found, "tagengine_outbox_dead") == 0


def test_backlog_gauges_of_an_outbox_nobody_delivers(tmp_path: Path) -> None:
    with Engine(ruleset(), deliver=False, outbox=tmp_path / "sends.db") as engine:
        engine.session("s").push(PUSH)
        engine.session("s").push(PUSH)
        assert engine.outbox is not None
        engine.outbox.ingest()  # type: ignore[attr-defined]
        found = samples(metrics_for(engine).exposition().decode())
        assert value(found, "tagengine_outbox_pending") == 2
        age = value(found, "tagengine_outbox_oldest_age_seconds")
        assert age is not None and age >= 0


def test_the_metrics_apps(wait_engine: Engine) -> None:
    metrics_for(wait_engine).push("processed")
    (response,) = asyncio.run(exchange(metrics_asgi_app(wait_engine), ("GET", "/", {})))
    assert response.status_code == 200
    assert value(samples(response.text), "tagengine_pushes_total", outcome="processed") == 1
    wsgi = httpx.Client(
        transport=httpx.WSGITransport(app=metrics_wsgi_app(wait_engine)),
        base_url="http://monitor.test",
    )
    with wsgi:
        text = wsgi.get("/").text
    assert value(samples(text), "tagengine_pushes_total", outcome="processed") == 1
    # Not served on the collect endpoint unless asked.
    (missing,) = asyncio.run(
        exchange(asgi_app(wait_engine, secret=SECRET), ("GET", "/metrics", {}))
    )
    assert missing.status_code == 404
    assert json.loads(missing.text) == {"error": "not found"}
