"""Edge collect batches: the pure merge of a session's consecutive collect requests
(:func:`engine.destinations.edge.batch_collect`) and their delivery by
:meth:`engine.dispatch.Dispatcher.deliver_many`, to the local emulator over loopback."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from textwrap import dedent
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import pytest
from pydantic import SecretStr

from engine import Engine, PayloadTooLarge
from engine.clients import RetryPolicy
from engine.destinations import (
    EDGE_SIZE_LIMIT,
    Batch,
    Request,
    batch_collect,
    build_edge_request,
    check_size,
)
from engine.destinations.base import serialize
from engine.dispatch import Dispatcher
from engine.emulator import EmulatorServer, Fault
from engine.results import Send
from engine.runtime import Targets
from engine.sessions import Session
from engine.settings import EdgeSettings
from tests.conftest import SETTINGS, load_text

DATASTREAM = "5b3c1e7a-1111-4c1d-9e0f-2a6b8d9c0e11"
TIMESTAMP = "2026-05-04T09:15:02.120Z"
NOW = 1777886102.12  # TIMESTAMP in epoch seconds
ECID = "05907638112924484241029082405297151763"
IDENTITY_KEY = "kndctr_53A16ACB5CC1D3760A495C99_AdobeOrg_identity"
IDENTITY: dict[str, Any] = {
    "ecid": ECID,
    "entries": [{"key": IDENTITY_KEY, "value": "CiYwNTkw", "expires": NOW + 3600}],
    "location_hint": "or2",
}
FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, total_timeout=5.0)


def settings(
    api: Literal["v1", "v2"] = "v2", url: str = "https://edge.adobedc.net"
) -> EdgeSettings:
    return EdgeSettings(datastream=DATASTREAM, domain="example.com", api=api, url=url)


def request(
    index: int,
    *,
    unloading: bool = True,
    api: Literal["v1", "v2"] = "v2",
    identity: dict[str, Any] = IDENTITY,
    url: str = "https://edge.adobedc.net",
    **fields: Any,
) -> Request:
    """The request for event ``index``: collect when ``unloading`` (the session has an
    identity), else interact. Its ``_id`` is ``event-<index>``."""
    return build_edge_request(
        {
            "type": "web.webinteraction.linkClicks",
            "xdm": {"web": {"webInteraction": {"name": f"link {index}", "type": "exit"}}},
            "documentUnloading": unloading,
            **fields,
        },
        settings(api, url),
        rule=f"Rule {index % 2}",
        identity=identity,
        timestamp=TIMESTAMP,
        event_id=f"event-{index}",
        request_id=f"request-{index}",
        now=NOW,
    )


def counter(prefix: str = "batch") -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"{prefix}-{next(numbers)}"


def event_ids(request: Request) -> list[str]:
    return [event["xdm"]["_id"] for event in request.body["events"]]


def query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query)


def assert_wire_exact(request: Request) -> None:
    """``body_bytes`` is the body, as ``serialize`` writes it."""
    assert request.body_bytes == serialize(request.body, rule=request.rule).encode()
    assert json.loads(request.body_bytes) == request.body


# ---------------------------------------------------------------------- the pure merge
def test_consecutive_collect_requests_become_one_with_their_events_in_order() -> None:
    requests = [request(i) for i in range(5)]
    (batch,) = batch_collect(requests, request_id=counter())
    merged = batch.request
    assert batch.members == (0, 1, 2, 3, 4)
    assert event_ids(merged) == [f"event-{i}" for i in range(5)]
    assert merged.body["meta"] == requests[0].body["meta"]
    assert list(merged.body) == ["events", "meta"]
    assert_wire_exact(merged)
    # Everything but the requestId is the requests' own.
    assert merged.request_id == "batch-1"
    assert query(merged.url) == [
        ("datastreamId", DATASTREAM),
        ("requestId", "batch-1"),
        ("silent", "true"),
    ]
    assert merged.url.split("?")[0] == requests[0].url.split("?")[0]
    assert merged.url.split("?")[0].endswith("/ee/or2/v2/collect")
    assert (merged.destination, merged.method, merged.kind) == ("edge", "POST", "collect")
    assert merged.headers == requests[0].headers
    assert merged.rule == "Rule 0, Rule 1"
    assert merged.event_id is None  # it carries five
    assert merged.size == len(merged.body_bytes) <= EDGE_SIZE_LIMIT


def test_at_most_max_events_per_request() -> None:
    requests = [request(i) for i in range(250)]
    batches = batch_collect(requests, request_id=counter())
    assert [len(b.members) for b in batches] == [100, 100, 50]
    assert [b.request.request_id for b in batches] == ["batch-1", "batch-2", "batch-3"]
    assert [i for b in batches for i in b.members] == list(range(250))
    assert [e for b in batches for e in event_ids(b.request)] == [f"event-{i}" for i in range(250)]
    for batch in batches:
        assert_wire_exact(batch.request)
    small = batch_collect(requests[:7], request_id=counter(), max_events=3)
    assert [b.members for b in small] == [(0, 1, 2), (3, 4, 5), (6,)]
    with pytest.raises(ValueError, match="max_events"):
        batch_collect(requests, request_id=counter(), max_events=0)


def test_split_at_64_kb() -> None:
    # ~20 KB events: three fit in 64 KB, a fourth would not.
    requests = [request(i, data={"blob": "é" * 10_000}) for i in range(10)]
    size = len(requests[0].body_bytes)
    assert 3 * size < EDGE_SIZE_LIMIT < 4 * size
    batches = batch_collect(requests, request_id=counter())
    assert [b.members for b in batches] == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9,)]
    for batch in batches[:3]:
        assert_wire_exact(batch.request)
        assert batch.request.size <= EDGE_SIZE_LIMIT
        check_size(batch.request)  # what the client checks before sending
    assert batches[3].request is requests[9]  # alone: sent as it was built
    # The bound is exactly the limit asked for.
    (pair,) = batch_collect(requests[:2], request_id=counter())
    limit = pair.request.size
    pairs = batch_collect(requests[:5], request_id=counter(), limit=limit)
    assert [b.members for b in pairs] == [(0, 1), (2, 3), (4,)]
    assert [b.request.size for b in pairs[:2]] == [limit, limit]
    singles = batch_collect(requests[:3], request_id=counter(), limit=limit - 1)
    assert [b.members for b in singles] == [(0,), (1,), (2,)]


def test_a_request_already_above_the_limit_is_left_for_the_size_check() -> None:
    big = request(1, data={"blob": "x" * 70_000})
    requests = [request(0), big, request(2), request(3)]
    batches = batch_collect(requests, request_id=counter())
    assert [b.members for b in batches] == [(0,), (1,), (2, 3)]
    assert batches[0].request is requests[0] and batches[1].request is big
    with pytest.raises(PayloadTooLarge):
        check_size(batches[1].request)


def test_other_requests_stay_single_and_the_order_is_kept() -> None:
    sitecore = Request(
        destination="sitecore",
        rule="Sitecore",
        method="GET",
        url="https://api.example/v1.2/event/create.json?client_key=k&message=%7B%7D",
        headers=(),
        body={},
        body_bytes=b"",
        kind="event",
    )
    requests = [
        request(0),
        request(1),
        request(2, unloading=False),  # interact
        request(3),
        sitecore,
        request(5),
        request(6),
        request(7),
        request(8, unloading=False),
    ]
    ids = counter()
    batches = batch_collect(requests, request_id=ids)
    assert [b.members for b in batches] == [(0, 1), (2,), (3,), (4,), (5, 6, 7), (8,)]
    for batch in batches:
        if len(batch.members) == 1:
            assert batch.request is requests[batch.members[0]]  # unchanged, same requestId
    assert [b.request.kind for b in batches] == [
        "collect",
        "interact",
        "collect",
        "event",
        "collect",
        "interact",
    ]
    # Only the merged requests took an id: two so far.
    assert [batches[0].request.request_id, batches[4].request.request_id] == ["batch-1", "batch-2"]
    assert ids() == "batch-3"


def test_only_requests_that_differ_in_their_events_merge() -> None:
    other_state = {**IDENTITY, "entries": [{"key": IDENTITY_KEY, "value": "other"}]}
    other_stream = dataclasses.replace(
        request(3), url=request(3).url.replace(DATASTREAM, "another-datastream")
    )
    extra_header = dataclasses.replace(request(5), headers=(*request(5).headers, ("X-Test", "1")))
    requests = [
        request(0),
        request(1),
        request(2, identity=other_state),  # another meta.state
        other_stream,
        request(4),
        extra_header,
        request(6, api="v1"),
        request(7),
    ]
    batches = batch_collect(requests, request_id=counter())
    assert [b.members for b in batches] == [(0, 1), (2,), (3,), (4,), (5,), (6,), (7,)]


def test_v1_collect_requests_batch_the_same_way() -> None:
    requests = [request(i, api="v1") for i in range(3)]
    (batch,) = batch_collect(requests, request_id=counter("v1"))
    assert batch.members == (0, 1, 2)
    assert urlsplit(batch.request.url).path == "/ee/or2/v1/collect"
    assert query(batch.request.url) == [("configId", DATASTREAM), ("requestId", "v1-1")]
    assert event_ids(batch.request) == ["event-0", "event-1", "event-2"]
    assert_wire_exact(batch.request)


def test_body_bytes_follow_the_body_even_when_an_input_was_serialized_otherwise() -> None:
    spaced = [
        dataclasses.replace(r, body_bytes=json.dumps(r.body, indent=1).encode())
        for r in (request(0), request(1))
    ]
    (batch,) = batch_collect([*spaced, request(2)], request_id=counter())
    assert batch.members == (0, 1, 2)
    assert_wire_exact(batch.request)


def test_non_ascii_and_escapes_survive_the_merge() -> None:
    requests = [
        request(0, data={"label": "café — 東京", "quote": 'a "b" \\ c'}),
        request(1, data={"emoji": "🎉"}),
    ]
    (batch,) = batch_collect(requests, request_id=counter())
    assert_wire_exact(batch.request)
    assert batch.request.body["events"][1]["data"] == {"emoji": "🎉"}


# ---------------------------------------------------------------------- delivery
EXIT_RULE = dedent(
    """\
    rule "Exit link" {
      on "exit"
      send event {
        type: "web.webinteraction.linkClicks"
        documentUnloading: true
        xdm: { web.webInteraction.name: state.link, web.webInteraction.type: "exit" }
      }
    }
    """
)
RULES = (
    dedent(
        """\
        rule "Page view" {
          on "page.view"
          send event { type: "web.webpagedetails.pageViews", xdm: { web.webPageDetails.name: state.page } }
        }
        """
    )
    + EXIT_RULE
)


class Visit:
    """A dry-run engine that builds a session's requests for the emulator, and a dispatcher
    that delivers them there."""

    def __init__(self, server: EmulatorServer) -> None:
        self.engine = Engine(
            load_text({"a_settings.rules": SETTINGS, "t.rules": RULES}),
            dry_run=True,
            edge_url=server.url,
        )
        self.targets = Targets.of(self.engine.ruleset, server.url)
        self.dispatcher = Dispatcher(policy=FAST, request_id=counter())
        self.handle = self.engine.session("visitor")
        session = self.engine.sessions.peek("visitor")
        assert session is not None
        self.session: Session = session

    def sends(self, items: Sequence[dict[str, Any]]) -> list[Send]:
        return [send for item in items for send in self.handle.push(item).sends]

    def identify(self) -> None:
        """A first page view: Edge gives the visitor an identity, so unloading events go to
        collect from now on."""
        (send,) = self.sends([{"event": "page.view", "page": "Home"}])
        self.dispatcher.deliver(send, self.session, self.targets)
        assert send.status == 200 and self.session.identity["has_identity"]

    def deliver(self, sends: list[Send]) -> None:
        self.dispatcher.deliver_many(sends, self.session, self.targets)

    def close(self) -> None:
        self.dispatcher.close()
        self.engine.close()


@pytest.fixture(name="visit")
def _visit(emulator: EmulatorServer) -> Iterator[Visit]:
    """A visitor Edge has identified (unloading events go to collect from now on), with the
    emulator's records of that cleared."""
    visit = Visit(emulator)
    try:
        visit.identify()
        emulator.clear()
        yield visit
    finally:
        visit.close()


def exits(first: int, count: int) -> list[dict[str, Any]]:
    return [{"event": "exit", "link": f"link {i}"} for i in range(first, first + count)]


def received(server: EmulatorServer) -> list[tuple[str, list[str]]]:
    """Each Edge request the emulator answered: its action and its events' ``_id``."""
    out = []
    for record in server.requests("/ee/"):
        body = record.body
        events = body["events"] if "events" in body else [body["event"]]
        out.append((record.path.rsplit("/", 1)[1], [e["xdm"]["_id"] for e in events]))
    return out


def test_every_event_arrives_once_in_order(emulator: EmulatorServer, visit: Visit) -> None:
    sends = visit.sends([*exits(0, 120), {"event": "page.view", "page": "Cart"}, *exits(120, 130)])
    assert [s.request.kind for s in sends].count("collect") == 250
    visit.deliver(sends)
    calls = received(emulator)
    assert [(action, len(ids)) for action, ids in calls] == [
        ("collect", 100),
        ("collect", 20),
        ("interact", 1),
        ("collect", 100),
        ("collect", 30),
    ]
    assert [i for _, ids in calls for i in ids] == [s.request.event_id for s in sends]
    assert all(r.status in (200, 204) for r in emulator.requests("/ee/"))
    collects = emulator.requests("/ee/or2/v2/collect")
    assert [r.query["requestId"] for r in collects] == ["batch-1", "batch-2", "batch-3", "batch-4"]
    assert all(r.body["meta"]["state"]["entries"] for r in collects)  # the identity travels
    for send in sends:
        assert send.error is None and send.attempts == 1 and send.duration is not None
        assert send.response["event_id"] == send.request.event_id
    batch = [s for s in sends if s.request.kind == "collect"][:100]
    assert {s.status for s in batch} == {204}
    assert {s.response["request_id"] for s in batch} == {"batch-1"}
    assert {s.duration for s in batch} == {batch[0].duration}
    assert sends[120].status == 200 and sends[120].response["ecid"]


def test_a_failing_batch_marks_all_its_sends(emulator: EmulatorServer, visit: Visit) -> None:
    sends = visit.sends(exits(0, 150))
    emulator.set_faults(Fault(status=503, count=3, path="/ee/or2/v2/collect"))
    visit.deliver(sends)
    failed, delivered = sends[:100], sends[100:]
    for send in failed:
        assert (send.status, send.attempts, send.response) == (503, 3, None)
        assert send.error and "HTTP 503" in send.error and "3 attempts" in send.error
    assert len({s.error for s in failed}) == 1
    assert {(s.status, s.attempts, s.error) for s in delivered} == {(204, 1, None)}
    assert [r.status for r in emulator.requests("/ee/")] == [503, 503, 503, 204]


def test_a_refused_batch_goes_again_one_send_at_a_time(
    emulator: EmulatorServer, visit: Visit
) -> None:
    sends = visit.sends(exits(0, 5))
    # The batch is refused, then the first send alone: one bad event sinks only itself.
    emulator.set_faults(Fault(status=400, count=2, path="/ee/or2/v2/collect"))
    visit.deliver(sends)
    first, rest = sends[0], sends[1:]
    assert (first.status, first.attempts, first.response) == (400, 1, None)
    assert first.error and "HTTP 400" in first.error
    assert {(s.status, s.attempts, s.error) for s in rest} == {(204, 1, None)}
    assert [s.response["event_id"] for s in rest] == [s.request.event_id for s in rest]
    carried = [len(r.body["events"]) for r in emulator.requests("/ee/")]
    assert carried == [5, 1, 1, 1, 1, 1]
    assert [r.status for r in emulator.requests("/ee/")] == [400, 400, 204, 204, 204, 204]


def test_a_batch_refused_for_its_datastream_is_not_sent_again_send_by_send(
    emulator: EmulatorServer, visit: Visit
) -> None:
    sends = visit.sends(exits(0, 5))
    emulator.set_faults(Fault(status=400, code="EXEG-0003-400", count=1, path="/ee/or2/v2/collect"))
    visit.deliver(sends)
    assert [r.status for r in emulator.requests("/ee/")] == [400]  # each alone would fail too
    assert {(s.status, s.attempts) for s in sends} == {(400, 1)}


def test_a_token_refusal_does_not_send_a_batch_again_send_by_send(
    emulator: EmulatorServer,
) -> None:
    """The token server's 400 (say a bad client secret) is no refusal of what the batch
    carries: one token request, not one more for each send."""
    emulator.configure(require_auth=True, credentials={"client-1": "s3cr3t"})
    emulator.set_faults(Fault(status=400, path="/ims/token"))
    edge = EdgeSettings(
        datastream=DATASTREAM,
        url=emulator.url,
        org="53A16ACB5CC1D3760A495C99@AdobeOrg",
        client_id="client-1",
        client_secret=SecretStr("s3cr3t"),
        token_url=f"{emulator.url}/ims/token/v3",
    )
    sends = [Send("Exit link", "edge", request(i, url=emulator.url)) for i in range(5)]
    session = Session("v")
    session.identity.update(IDENTITY)
    dispatcher = Dispatcher(policy=RetryPolicy(max_attempts=1))
    try:
        dispatcher.deliver_many(sends, session, Targets(edge, None))
    finally:
        dispatcher.close()
    assert all(s.error and "token request" in s.error for s in sends)
    assert len(emulator.requests("/ims/")) == 1 and emulator.requests("/ee/") == []


def test_a_retried_batch_resends_the_same_body(emulator: EmulatorServer, visit: Visit) -> None:
    sends = visit.sends(exits(0, 40))
    emulator.set_faults(Fault(status=503, retry_after="0", count=2, path="/ee/"))
    visit.deliver(sends)
    assert {(s.status, s.attempts, s.error) for s in sends} == {(204, 3, None)}
    calls = emulator.requests("/ee/")
    assert [c.status for c in calls] == [503, 503, 204]
    assert len({json.dumps(c.body) for c in calls}) == 1
    assert len({c.query["requestId"] for c in calls}) == 1


def test_a_lone_collect_send_goes_as_deliver_sends_it(
    emulator: EmulatorServer, visit: Visit
) -> None:
    sends = visit.sends(exits(0, 1))
    visit.deliver(sends)
    (record,) = emulator.requests("/ee/")
    assert record.query["requestId"] == sends[0].request.request_id  # not re-identified
    assert (sends[0].status, sends[0].error) == (204, None)


def test_a_send_above_the_limit_is_refused_alone_before_any_network_call() -> None:
    # The runtime refuses such a send when it builds it; a request built elsewhere (replayed
    # from an outbox written with another limit, say) still meets the client's size check.
    url = "http://127.0.0.1:9"  # nothing listens: the small ones fail to connect
    small = [Send("Exit link", "edge", request(i, url=url)) for i in range(2)]
    big = Send("Exit link", "edge", request(2, url=url, data={"blob": "y" * 70_000}))
    session = Session("v")
    session.identity.update(IDENTITY)
    targets = Targets(settings(url=url), None)
    dispatcher = Dispatcher(policy=FAST)
    try:
        dispatcher.deliver_many([*small, big], session, targets)
    finally:
        dispatcher.close()
    assert big.error and "above the 65,536-byte limit" in big.error
    assert (big.status, big.attempts, big.response) == (None, 0, None)
    # The small ones went as one batch, retried until the attempts ran out.
    assert {(s.status, s.attempts) for s in small} == {(None, FAST.max_attempts)}
    assert len({s.error for s in small}) == 1 and small[0].error
    assert "ConnectError" in small[0].error


def test_batch_type_is_a_named_pair() -> None:
    batch = Batch(request(0), (0,))
    merged, members = batch
    assert merged is batch.request and members == (0,)


def test_an_engine_in_wait_mode_sends_a_pushs_collect_sends_as_one_request(
    emulator: EmulatorServer,
) -> None:
    rules = RULES + dedent(
        """\
        rule "Exit link, again" {
          on "exit"
          send event { type: "web.webinteraction.linkClicks", documentUnloading: true }
        }
        """
    )
    engine = Engine(
        load_text({"a_settings.rules": SETTINGS, "t.rules": rules}), edge_url=emulator.url
    )
    try:
        visitor = engine.session("visitor")
        assert visitor.push({"event": "page.view", "page": "Home"}).sends[0].status == 200
        emulator.clear()
        result = visitor.push({"event": "exit", "link": "out"})
    finally:
        engine.close()
    assert [s.request.kind for s in result.sends] == ["collect", "collect"]
    calls = received(emulator)
    assert calls == [("collect", [s.request.event_id for s in result.sends])]
    assert {s.status for s in result.sends} == {204}
