"""What background mode costs the pushing thread: it never waits on a lock a delivery thread
holds, delivery threads do not start work while a push runs, yet pushes back to back never
starve delivery and no wake-up is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from engine import Engine
from engine.errors import PushError
from engine.results import PushResult, Send
from tests.conftest import SETTINGS, load_text

RULES = """\
rule "Page view" {
  on "page.view"
  send event { type: "web.webpagedetails.pageViews", xdm: { web.webPageDetails.name: state.page.name } }
}
"""


def _answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"requestId": "r", "handle": []})


@pytest.fixture
def engine() -> Iterator[Engine]:
    """Background mode with the in-memory outbox, delivering to an in-process transport; a
    long poll interval, so that a lost wake-up would show as a stall of many seconds."""
    http = httpx.Client(transport=httpx.MockTransport(_answer))
    made = Engine(
        load_text({"a_settings.rules": SETTINGS, "t.rules": RULES}),
        background=True,
        http=http,
    )
    assert made._background is not None
    made._background._poll = 30.0
    try:
        yield made
    finally:
        made.close(5)
        http.close()


def _delivered(engine: Engine) -> list[Send]:
    sends: list[Send] = []
    engine.add_result_hook(lambda session, send: sends.append(send))
    return sends


def test_notify_takes_no_lock_a_worker_may_hold(engine: Engine) -> None:
    background = engine._background
    assert background is not None
    with background._cond:  # as a delivery thread holds it, for a moment, now and then
        done = threading.Event()
        pusher = threading.Thread(
            target=lambda: (
                engine.push({"event": "page.view", "page": {"name": "a"}}, session="s"),
                done.set(),
            )
        )
        pusher.start()
        assert done.wait(5), "the push waited for the delivery thread's lock"
    pusher.join()
    assert engine.flush(5)


def test_no_wake_up_is_lost_between_pushes_from_several_threads(engine: Engine) -> None:
    sends = _delivered(engine)

    def pushes(thread: int) -> None:
        for n in range(50):
            engine.push(
                {"event": "page.view", "page": {"name": f"{thread}-{n}"}}, session=f"s{thread}"
            )
            if n % 7 == 0:
                time.sleep(0.002)  # let the workers go idle now and then

    threads = [threading.Thread(target=pushes, args=(t,)) for t in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert engine.flush(10)
    assert time.monotonic() - started < 10  # a lost wake-up waits out the 30 s poll
    assert len(sends) == 200 and all(send.error is None for send in sends)


def test_delivery_waits_for_a_push_in_progress_but_not_for_ever(engine: Engine) -> None:
    """A push marked in progress holds delivery back for about a switch interval at a time;
    a process pushing without a pause still gets its sends delivered."""
    background = engine._background
    assert background is not None
    sends = _delivered(engine)
    background.pushing.append(None)  # a push that never ends: pushes back to back
    try:
        for n in range(20):
            engine.push({"event": "page.view", "page": {"name": f"p{n}"}}, session="s")
        assert engine.flush(10)
    finally:
        background.pushing.pop()
    assert [
        send.request.body["event"]["xdm"]["web"]["webPageDetails"]["name"] for send in sends
    ] == [f"p{n}" for n in range(20)]


def test_a_push_does_not_wait_for_a_delivery_step(engine: Engine) -> None:
    """A push marks itself in progress and unmarks itself, also when it raises."""
    background = engine._background
    assert background is not None
    seen: list[int] = []
    engine.add_result_hook(lambda session, send: None)
    original = engine._count_dropped  # (called by every push, once its sends are stored)

    def counted(result: PushResult) -> None:
        seen.append(len(background.pushing))
        original(result)

    engine._count_dropped = counted  # type: ignore[method-assign]
    engine.push({"event": "page.view", "page": {"name": "a"}}, session="s")
    assert seen == [1] and background.pushing == []
    with pytest.raises(PushError):
        engine.push({"event": "page.view", "page": {"name": float("nan")}}, session="s")
    assert background.pushing == []
