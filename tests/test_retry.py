"""The retry policy (docs/destinations.md, "Retries"): which failures are retried, how long each
wait is, and when the loop gives up. A fake clock, sleep and random source: nothing sleeps."""

from __future__ import annotations

import asyncio
import email.utils
import random
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from engine.clients import (
    AsyncRetrier,
    DeliveryError,
    Retrier,
    RetryPolicy,
    parse_retry_after,
)
from engine.clients.retry import error_code
from engine.errors import DispatchError

EPOCH = 1_780_000_000.0  # an arbitrary wall-clock "now"
URL = "https://edge.example/ee/v2/interact?datastreamId=ds&requestId=r-1"
PROBLEM_503 = {
    "type": "https://ns.adobe.com/aep/errors/EXEG-0201-503",
    "status": 503,
    "title": "The service is temporarily unavailable",
}


class Fake:
    """A clock that only moves when something sleeps (or an attempt takes time), a sleep that
    records, and a random source that records its bounds and returns ``fraction`` of them."""

    def __init__(self, fraction: float = 1.0) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []
        self.bounds: list[tuple[float, float]] = []
        self.fraction = fraction

    def clock(self) -> float:
        return self.t

    def now(self) -> float:
        return EPOCH + self.t

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.t += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def uniform(self, low: float, high: float) -> float:
        self.bounds.append((low, high))
        return low + (high - low) * self.fraction

    def retrier(self, policy: RetryPolicy | None = None) -> Retrier:
        return Retrier(
            policy, sleep=self.sleep, clock=self.clock, now=self.now, random=self.uniform
        )

    def async_retrier(self, policy: RetryPolicy | None = None) -> AsyncRetrier:
        return AsyncRetrier(
            policy, sleep=self.asleep, clock=self.clock, now=self.now, random=self.uniform
        )


def response(
    status: int, headers: dict[str, str] | None = None, json: Any = None
) -> httpx.Response:
    return httpx.Response(status, headers=headers, json=json, request=httpx.Request("POST", URL))


Step = httpx.Response | Exception


def script(*steps: Step, cost: float = 0.0, fake: Fake | None = None) -> Callable[[], Any]:
    """An attempt function answering ``steps`` in order (the last one repeats); each attempt
    takes ``cost`` seconds on the fake clock."""
    answers: Iterator[Step] = iter(steps)
    last: list[Step] = [steps[-1]]
    calls: list[int] = []

    def attempt() -> httpx.Response:
        calls.append(1)
        if fake is not None:
            fake.t += cost
        step = next(answers, last[0])
        if isinstance(step, Exception):
            raise step
        return step

    attempt.calls = calls  # type: ignore[attr-defined]
    return attempt


def calls(attempt: Callable[[], Any]) -> int:
    return len(attempt.calls)  # type: ignore[attr-defined]


# ------------------------------------------------------------------ what is retried
@pytest.mark.parametrize("status", [408, 429, 502, 503, 504, 507])
def test_retryable_statuses_are_retried_until_success(status: int) -> None:
    fake = Fake()
    attempt = script(response(status), response(status), response(200))
    outcome = fake.retrier().run(attempt, destination="edge")
    assert outcome.response.status_code == 200
    assert outcome.attempts == 3 == calls(attempt)
    assert len(fake.sleeps) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 415, 422, 500, 501, 505])
def test_other_4xx_and_500_are_final_and_returned(status: int) -> None:
    fake = Fake()
    attempt = script(response(status), response(200))
    outcome = fake.retrier().run(attempt)
    assert outcome.response.status_code == status
    assert outcome.attempts == 1 == calls(attempt)
    assert fake.sleeps == []


def test_success_statuses_return_at_once() -> None:
    for status in (200, 201, 202, 204, 207):
        fake = Fake()
        outcome = fake.retrier().run(script(response(status)))
        assert (outcome.response.status_code, outcome.attempts, fake.sleeps) == (status, 1, [])


REQUEST = httpx.Request("POST", URL)


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused", request=REQUEST),
        httpx.ConnectTimeout("slow connect", request=REQUEST),
        httpx.ReadTimeout("stalled", request=REQUEST),
        httpx.WriteTimeout("stalled", request=REQUEST),
        httpx.PoolTimeout("pool", request=REQUEST),
        httpx.ReadError("reset", request=REQUEST),
        httpx.RemoteProtocolError(
            "Server disconnected without sending a response.", request=REQUEST
        ),
    ],
    ids=lambda e: type(e).__name__,
)
def test_connection_errors_and_timeouts_are_retried(error: Exception) -> None:
    fake = Fake()
    attempt = script(error, response(200))
    outcome = fake.retrier().run(attempt)
    assert (outcome.response.status_code, outcome.attempts) == (200, 2)


@pytest.mark.parametrize(
    "error",
    [
        httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."),
        httpx.LocalProtocolError("Illegal header value"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_on_our_side_are_not_retried(error: Exception) -> None:
    fake = Fake()
    attempt = script(error, response(200))
    with pytest.raises(DeliveryError) as caught:
        fake.retrier().run(attempt, destination="edge", request_id="r-1")
    failure = caught.value
    assert isinstance(failure, DispatchError)
    assert (failure.attempts, failure.retryable, failure.status) == (1, False, None)
    assert failure.__cause__ is error
    assert failure.request_id == "r-1" and failure.destination == "edge"
    assert type(error).__name__ in str(failure) and calls(attempt) == 1


def test_ambiguous_failures_can_be_left_unretried() -> None:
    policy = RetryPolicy(retry_ambiguous=False)
    stalled = httpx.ReadTimeout("stalled", request=REQUEST)
    with pytest.raises(DeliveryError) as caught:
        Fake().retrier(policy).run(script(stalled, response(200)))
    assert caught.value.attempts == 1 and not caught.value.retryable
    # a refused connection never delivered anything: still retried
    refused = httpx.ConnectError("refused", request=REQUEST)
    outcome = Fake().retrier(policy).run(script(refused, response(201)))
    assert outcome.attempts == 2


# ------------------------------------------------------------------ Retry-After
def test_retry_after_seconds_is_the_wait() -> None:
    fake = Fake()
    attempt = script(
        response(503, {"Retry-After": "3"}), response(429, {"Retry-After": "0"}), response(200)
    )
    outcome = fake.retrier().run(attempt)
    assert outcome.attempts == 3
    assert fake.sleeps == [3.0, 0.0]
    assert fake.bounds == []  # no jitter drawn when the server says how long


def test_retry_after_http_date_is_relative_to_the_wall_clock() -> None:
    fake = Fake()
    when = email.utils.formatdate(EPOCH + 7, usegmt=True)
    past = email.utils.formatdate(EPOCH - 60, usegmt=True)
    attempt = script(
        response(503, {"Retry-After": when}), response(503, {"Retry-After": past}), response(200)
    )
    fake.retrier().run(attempt)
    # the date was 7 s after "now" at the first failure; the past one means "now"
    assert fake.sleeps == [pytest.approx(7.0), 0.0]


def test_a_retry_after_beyond_the_policy_ends_the_retries_never_retrying_sooner() -> None:
    """The server asked for 100 s; the policy waits at most 10: giving up at once (with when a
    replay may go) is right, retrying after 10 s is not."""
    fake = Fake()
    attempt = script(response(503, {"Retry-After": "100"}), response(200))
    with pytest.raises(DeliveryError) as caught:
        fake.retrier(RetryPolicy(max_delay=10.0)).run(attempt)
    assert fake.sleeps == []
    error = caught.value
    assert (error.status, error.attempts, error.retryable) == (503, 1, True)
    assert error.retry_at == pytest.approx(EPOCH + 100)
    assert "Retry-After 100s" in str(error)


def test_a_retry_after_past_the_time_left_ends_the_retries_too() -> None:
    fake = Fake()
    policy = RetryPolicy(max_delay=10.0, total_timeout=12.0)
    attempt = script(
        response(503, {"Retry-After": "8"}), response(503, {"Retry-After": "8"}), response(200)
    )
    with pytest.raises(DeliveryError) as caught:
        fake.retrier(policy).run(attempt)
    assert fake.sleeps == [8.0]  # the first wait fits; the second would end past 12 s
    assert caught.value.attempts == 2
    assert caught.value.retry_at == pytest.approx(EPOCH + 16)


def test_attempts_exhausted_still_say_when_the_server_asked_to_come_back() -> None:
    fake = Fake()
    attempt = script(response(429, {"Retry-After": "2"}), response(429, {"Retry-After": "5"}))
    with pytest.raises(DeliveryError) as caught:
        fake.retrier(RetryPolicy(max_attempts=2)).run(attempt)
    assert fake.sleeps == [2.0]
    assert caught.value.retry_at == pytest.approx(EPOCH + 2 + 5)
    with pytest.raises(DeliveryError) as plain:  # no Retry-After: nothing asked
        fake.retrier(RetryPolicy(max_attempts=1)).run(script(response(503)))
    assert plain.value.retry_at is None


def test_the_async_retrier_ends_on_a_long_retry_after_too() -> None:
    fake = Fake()

    async def go() -> None:
        steps = iter([response(503, {"Retry-After": "100"}), response(200)])

        async def attempt() -> httpx.Response:
            return next(steps)

        await fake.async_retrier(RetryPolicy(max_delay=10.0)).run(attempt)

    with pytest.raises(DeliveryError) as caught:
        asyncio.run(go())
    assert fake.sleeps == [] and caught.value.retry_at == pytest.approx(EPOCH + 100)


def test_unreadable_retry_after_falls_back_to_backoff() -> None:
    fake = Fake(fraction=0.5)
    fake.retrier().run(script(response(503, {"Retry-After": "soon"}), response(200)))
    assert fake.bounds == [(0.0, 0.2)] and fake.sleeps == [pytest.approx(0.1)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (None, None),
        ("", None),
        ("soon", None),
        ("-3", None),
        ("nan", None),
        ("inf", None),  # a wait that never ends would park a send forever
        ("1e999", None),
        ("9" * 5000, None),  # beyond int()'s digit limit: unreadable, not an exception
        ("\u00b2", None),  # a Latin-1 byte httpx decodes to a digit int() refuses
        ("999999999999999", 999999999999999.0),
        (email.utils.formatdate(EPOCH + 30, usegmt=True), 30.0),
        (email.utils.formatdate(EPOCH - 30, usegmt=True), 0.0),
        ("Wed, 21 Oct 2015 07:28:00 -0000", None),  # no real zone: unreadable
        ("Wed, 99 Foo 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    got = parse_retry_after(value, EPOCH)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_retry_after_on_a_final_status_is_ignored() -> None:
    fake = Fake()
    outcome = fake.retrier().run(script(response(400, {"Retry-After": "5"})))
    assert outcome.attempts == 1 and fake.sleeps == []


# ------------------------------------------------------------------ backoff
def test_backoff_is_exponential_with_full_jitter_up_to_the_cap() -> None:
    fake = Fake(fraction=1.0)  # the top of each jitter range
    policy = RetryPolicy(max_attempts=8, base_delay=0.2, max_delay=2.0, total_timeout=1000)
    with pytest.raises(DeliveryError):
        fake.retrier(policy).run(script(response(503)))
    assert fake.bounds == [
        (0.0, 0.2),
        (0.0, 0.4),
        (0.0, 0.8),
        (0.0, 1.6),
        (0.0, 2.0),
        (0.0, 2.0),
        (0.0, 2.0),
    ]
    assert fake.sleeps == pytest.approx([0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])


def test_full_jitter_can_wait_nothing() -> None:
    fake = Fake(fraction=0.0)
    fake.retrier().run(script(response(502), response(502), response(200)))
    assert fake.sleeps == [0.0, 0.0]


def test_backoff_draws_from_the_real_random_source_within_bounds() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0)
    rng = random.Random(7)
    for retry in range(12):
        ceiling = min(3.0, 0.5 * 2**retry)
        for _ in range(50):
            assert 0.0 <= policy.backoff(retry, rng.uniform) <= ceiling


def test_backoff_wait_is_capped_by_the_time_left() -> None:
    fake = Fake(fraction=1.0)
    policy = RetryPolicy(base_delay=4.0, max_delay=10.0, total_timeout=5.0)
    outcome = fake.retrier(policy).run(script(response(503), response(503), response(200)))
    assert fake.sleeps == [4.0, 1.0]
    assert outcome.attempts == 3


# ------------------------------------------------------------------ giving up
def test_max_attempts_then_a_typed_error_with_the_last_answer() -> None:
    fake = Fake()
    attempt = script(response(503, json=PROBLEM_503))
    with pytest.raises(DeliveryError) as caught:
        fake.retrier(RetryPolicy(max_attempts=5)).run(attempt, destination="edge", request_id="r-1")
    failure = caught.value
    assert calls(attempt) == 5 and len(fake.sleeps) == 4
    assert failure.attempts == 5 and failure.status == 503 and failure.retryable
    assert failure.code == "EXEG-0201-503"
    assert failure.title == "The service is temporarily unavailable"
    assert failure.last_error == "HTTP 503 EXEG-0201-503 The service is temporarily unavailable"
    assert "gave up after 5 attempts" in str(failure) and "attempts exhausted" in str(failure)


def test_one_attempt_policy_never_retries() -> None:
    fake = Fake()
    with pytest.raises(DeliveryError) as caught:
        fake.retrier(RetryPolicy(max_attempts=1)).run(script(response(429)))
    assert caught.value.attempts == 1 and fake.sleeps == []


def test_exhausted_connection_errors_keep_the_cause() -> None:
    fake = Fake()
    refused = httpx.ConnectError("[Errno 111] Connection refused", request=REQUEST)
    with pytest.raises(DeliveryError) as caught:
        fake.retrier(RetryPolicy(max_attempts=3)).run(script(refused))
    failure = caught.value
    assert failure.attempts == 3 and failure.retryable and failure.status is None
    assert failure.last_error == "ConnectError: [Errno 111] Connection refused"
    assert failure.__cause__ is refused


def test_total_time_bounds_the_retries() -> None:
    fake = Fake(fraction=1.0)
    policy = RetryPolicy(max_attempts=100, base_delay=1.0, max_delay=1.0, total_timeout=10.0)
    attempt = script(response(503), cost=2.0, fake=fake)  # each attempt takes 2 s
    with pytest.raises(DeliveryError) as caught:
        fake.retrier(policy).run(attempt)
    # attempts start at t = 0, 3, 6, 9; the fourth ends at 11 > 10
    assert calls(attempt) == 4
    assert "time exhausted" in str(caught.value) and caught.value.retryable
    assert fake.t == pytest.approx(11.0)


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=-1)


def test_a_budget_is_shared_between_runs() -> None:
    fake = Fake()
    retrier = fake.retrier(RetryPolicy(max_attempts=3))
    budget = retrier.budget()
    first = retrier.run(script(response(503), response(401)), budget=budget)
    assert (first.response.status_code, first.attempts) == (401, 2)
    second = retrier.run(script(response(200)), budget=budget)
    assert second.attempts == 3
    with pytest.raises(DeliveryError) as caught:
        retrier.run(script(response(200)), budget=budget)
    assert "no attempt left" in str(caught.value)


# ------------------------------------------------------------------ the same bytes every time
def test_every_attempt_sends_the_same_bytes() -> None:
    seen: list[tuple[str, bytes]] = []
    answers = iter([503, 502, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.read()))
        return httpx.Response(next(answers))

    body = b'{"event":{"xdm":{"_id":"6a9f","eventType":"web.webpagedetails.pageViews"}}}'
    fake = Fake()
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        outcome = fake.retrier().run(lambda: http.post(URL, content=body))
    assert outcome.attempts == 3
    assert seen == [(URL, body)] * 3


# ------------------------------------------------------------------ async
def test_async_retrier_follows_the_same_rules() -> None:
    fake = Fake()
    answers: Iterator[Step] = iter(
        [
            response(503, {"Retry-After": "2"}),
            httpx.ReadTimeout("stalled", request=REQUEST),
            response(200),
        ]
    )

    async def attempt() -> httpx.Response:
        step = next(answers)
        if isinstance(step, Exception):
            raise step
        return step

    outcome = asyncio.run(fake.async_retrier().run(attempt, destination="edge"))
    assert (outcome.response.status_code, outcome.attempts) == (200, 3)
    assert fake.sleeps == [2.0, pytest.approx(0.4)]


def test_async_retrier_gives_up_like_the_sync_one() -> None:
    fake = Fake()

    async def attempt() -> httpx.Response:
        return response(504)

    async def main() -> None:
        with pytest.raises(DeliveryError) as caught:
            await fake.async_retrier(RetryPolicy(max_attempts=2)).run(attempt)
        assert caught.value.attempts == 2 and caught.value.status == 504

    asyncio.run(main())
    assert len(fake.sleeps) == 1

    async def final() -> httpx.Response:
        raise httpx.UnsupportedProtocol("nope")

    with pytest.raises(DeliveryError):
        asyncio.run(Fake().async_retrier().run(final))


@pytest.mark.parametrize(
    ("problem_type", "code"),
    [
        ("https://ns.adobe.com/aep/errors/EXEG-0112-413", "EXEG-0112-413"),
        ("https://ns.adobe.com/aep/errors/EXEG-0503-401/", "EXEG-0503-401"),
        ("about:blank", None),
        ("https://example.com/probs/out-of-credit", None),
        (None, None),
        (42, None),
    ],
)
def test_error_code_of_a_problem_type(problem_type: Any, code: str | None) -> None:
    assert error_code(problem_type) == code
