"""Retries as docs/destinations.md says ("Retries", ours): only 408, 429, 502, 503, 504, 507 and
connection errors or timeouts; ``Retry-After`` honoured; otherwise exponential backoff with full
jitter; a bounded number of attempts and a bounded total time. The attempt function resends the
same bytes every time, so the same ``xdm._id`` reaches the destination on every attempt.

::

    retrier = Retrier(RetryPolicy(max_attempts=5))
    outcome = retrier.run(lambda: http.send(built), destination="edge", request_id=rid)
    outcome.response, outcome.attempts, outcome.duration

:meth:`Retrier.run` returns the first response whose status is not retryable (a 2xx, or a 400
the caller turns into its own error) and raises :class:`DeliveryError` when retries run out or
a failure cannot be retried. The sleep, the random source and both clocks are injectable, so
tests never sleep. :class:`AsyncRetrier` is the same loop for ``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random as _random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from engine.errors import DispatchError

__all__ = [
    "AMBIGUOUS_ERRORS",
    "RETRYABLE_ERRORS",
    "RETRYABLE_STATUSES",
    "AsyncRetrier",
    "Budget",
    "DeliveryError",
    "Outcome",
    "Retrier",
    "RetryPolicy",
    "error_code",
    "parse_retry_after",
    "problem_of",
]

log = logging.getLogger("engine.clients")
_CODE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2,}-\d{4}-\d{3}$")

RETRYABLE_STATUSES: frozenset[int] = frozenset({408, 429, 502, 503, 504, 507})
"""Statuses worth another attempt; every other 4xx and 500 are final."""

RETRYABLE_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.TimeoutException,  # ConnectTimeout, ReadTimeout, WriteTimeout, PoolTimeout
    httpx.NetworkError,  # ConnectError, ReadError, WriteError, CloseError
    httpx.RemoteProtocolError,  # the server dropped the connection mid-answer
    httpx.ProxyError,
)
"""Transport failures worth another attempt. ``UnsupportedProtocol`` and
``LocalProtocolError`` (a bad URL or request on our side) are final."""

AMBIGUOUS_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
"""Failures after which the request may have reached the destination (see
:attr:`RetryPolicy.retry_ambiguous`). A refused or timed-out connection never delivered it."""


class DeliveryError(DispatchError):
    """A send that failed: a final error status, or retries that ran out.

    Besides :class:`~engine.errors.DispatchError`'s ``status``, ``code`` (the ``EXEG-…`` code
    when the body is RFC 7807), ``title`` and ``request_id``: ``attempts`` made, ``last_error``
    (a one-line description of the last failure, never a credential), ``retryable`` (true
    when the last failure was retryable and only the attempts or the time ran out: a later
    replay may succeed) and ``retry_at`` (epoch seconds: what the last answer's
    ``Retry-After`` asked to wait for, when it had one; no replay should start before).
    """

    def __init__(
        self,
        message: str,
        *,
        destination: str | None = None,
        status: int | None = None,
        code: str | None = None,
        title: str | None = None,
        request_id: str | None = None,
        attempts: int = 0,
        last_error: str | None = None,
        retryable: bool = False,
        retry_at: float | None = None,
    ) -> None:
        super().__init__(
            message,
            destination=destination,
            status=status,
            code=code,
            title=title,
            request_id=request_id,
        )
        self.attempts = attempts
        self.last_error = last_error
        self.retryable = retryable
        self.retry_at = retry_at


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry one send.

    ``max_attempts`` counts every attempt (the first one included); ``total_timeout`` bounds the
    time from the first attempt until the last one starts (an attempt in flight is bounded by
    the HTTP client's own timeouts). A delay is ``Retry-After`` when the answer has one, else
    ``uniform(0, min(max_delay, base_delay * 2**n))`` before retry ``n`` (0-based), at most
    ``max_delay`` and the time left; a ``Retry-After`` beyond that ends the retries at once
    (never sooner than the server asked), with :attr:`DeliveryError.retry_at` saying when a
    replay may go. ``retry_ambiguous=False`` stops retrying failures
    after which the destination may already hold the request (:data:`AMBIGUOUS_ERRORS`), for a
    destination that cannot de-duplicate.
    """

    max_attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 10.0
    total_timeout: float = 30.0
    retry_statuses: frozenset[int] = RETRYABLE_STATUSES
    retry_ambiguous: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.total_timeout < 0:
            raise ValueError("delays and the total timeout cannot be negative")

    def retries_status(self, status: int) -> bool:
        """Whether an answer with this status is worth another attempt."""
        return status in self.retry_statuses

    def retries_error(self, error: BaseException) -> bool:
        """Whether a transport failure is worth another attempt."""
        if not isinstance(error, RETRYABLE_ERRORS):
            return False
        return self.retry_ambiguous or not isinstance(error, AMBIGUOUS_ERRORS)

    def backoff(self, retry: int, uniform: Callable[[float, float], float]) -> float:
        """The full-jitter delay before retry ``retry`` (0 for the first retry)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(retry, 64))
        return float(uniform(0.0, ceiling))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta seconds or an HTTP-date (relative to
    ``now``, epoch seconds; a past date is 0). ``None`` when absent or unreadable (and for an
    infinite or NaN wait, or one of more than 15 digits)."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():  # not "²": str.isdigit says yes, int() says no
        return float(int(text)) if len(text) <= 15 else None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if 0 <= seconds < 1e15 else None  # NaN and infinities are unreadable
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000" and obsolete zones: HTTP-dates are always GMT
        return None
    return max(0.0, moment.timestamp() - now)


def problem_of(response: httpx.Response) -> tuple[str | None, str | None]:
    """``(code, title)`` of an RFC 7807 body (``type`` ending in ``EXEG-NNNN-SSS``); ``None``
    where the body does not say."""
    try:
        body: Any = response.json()
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(body, dict):
        return None, None
    kind, title = body.get("type"), body.get("title")
    return error_code(kind), title if isinstance(title, str) else None


def error_code(problem_type: Any) -> str | None:
    """The vendor code an RFC 7807 ``type`` ends in (``…/EXEG-0112-413`` → ``EXEG-0112-413``);
    ``None`` for ``about:blank`` and other types without one."""
    if not isinstance(problem_type, str):
        return None
    match = _CODE.search(problem_type.rstrip("/"))
    return match.group(0) if match else None


@dataclass(slots=True)
class Budget:
    """The attempts and time one send has used; several :meth:`Retrier.run` calls may share
    one (a resend after a token refresh or a new browser id counts against the same send)."""

    started: float
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A final answer: the response, the attempts it took and the seconds since the first."""

    response: httpx.Response
    attempts: int
    duration: float


def _describe(failure: httpx.Response | BaseException) -> str:
    if isinstance(failure, httpx.Response):
        code, title = problem_of(failure)
        text = f"HTTP {failure.status_code}"
        if code:
            text += f" {code}"
        if title:
            text += f" {title}"
        return text
    detail = str(failure).splitlines()[0] if str(failure) else ""
    return f"{type(failure).__name__}: {detail}" if detail else type(failure).__name__


class _Loop:
    """What the sync and async loops share: every decision, none of the waiting."""

    def __init__(
        self,
        policy: RetryPolicy | None,
        *,
        clock: Callable[[], float],
        now: Callable[[], float],
        random: Callable[[float, float], float],
    ) -> None:
        self.policy = policy if policy is not None else RetryPolicy()
        self._clock = clock
        self._now = now
        self._random = random

    def budget(self) -> Budget:
        """A fresh budget starting now."""
        return Budget(started=self._clock())

    def _elapsed(self, budget: Budget) -> float:
        return self._clock() - budget.started

    def _begin(self, budget: Budget, destination: str | None, request_id: str | None) -> None:
        if budget.attempts >= self.policy.max_attempts:
            raise self._give_up(budget, None, destination, request_id, "no attempt left")
        budget.attempts += 1

    def _done(self, budget: Budget, response: httpx.Response) -> Outcome:
        return Outcome(response, budget.attempts, self._elapsed(budget))

    def _delay(
        self,
        budget: Budget,
        failure: httpx.Response | BaseException,
        destination: str | None,
        request_id: str | None,
    ) -> float:
        """The wait before the next attempt, or :class:`DeliveryError` when there is none."""
        description = _describe(failure)
        budget.errors.append(description)
        if isinstance(failure, BaseException) and not self.policy.retries_error(failure):
            raise self._give_up(budget, failure, destination, request_id, "not retryable")
        asked: float | None = None  # what Retry-After asks to wait
        if isinstance(failure, httpx.Response):
            asked = parse_retry_after(failure.headers.get("Retry-After"), self._now())
        retry_at = None if asked is None else self._now() + asked
        if budget.attempts >= self.policy.max_attempts:
            raise self._give_up(
                budget, failure, destination, request_id, "attempts exhausted", retry_at
            )
        remaining = self.policy.total_timeout - self._elapsed(budget)
        if remaining <= 0:
            raise self._give_up(
                budget, failure, destination, request_id, "time exhausted", retry_at
            )
        if asked is not None and asked > min(self.policy.max_delay, remaining):
            # Never sooner than the server asked: give up now, and say when a replay may go.
            raise self._give_up(
                budget,
                failure,
                destination,
                request_id,
                f"Retry-After {asked:g}s is beyond the retry policy's wait",
                retry_at,
            )
        wait = (
            asked if asked is not None else self.policy.backoff(budget.attempts - 1, self._random)
        )
        wait = max(0.0, min(wait, self.policy.max_delay, remaining))
        log.debug(
            "%s request %s: attempt %d failed (%s), retrying in %.3fs",
            destination or "destination",
            request_id or "-",
            budget.attempts,
            description,
            wait,
        )
        return wait

    def _give_up(
        self,
        budget: Budget,
        failure: httpx.Response | BaseException | None,
        destination: str | None,
        request_id: str | None,
        why: str,
        retry_at: float | None = None,
    ) -> DeliveryError:
        status = code = title = None
        retryable = False
        if isinstance(failure, httpx.Response):
            status = failure.status_code
            code, title = problem_of(failure)
            retryable = self.policy.retries_status(status)
        elif failure is not None:
            retryable = self.policy.retries_error(failure)
        last = budget.errors[-1] if budget.errors else None
        attempts = budget.attempts
        message = (
            f"{destination or 'destination'}: gave up after {attempts} attempt"
            f"{'s' if attempts != 1 else ''} in {self._elapsed(budget):.2f}s ({why})"
        )
        if last:
            message += f"; last error: {last}"
        return DeliveryError(
            message,
            destination=destination,
            status=status,
            code=code,
            title=title,
            request_id=request_id,
            attempts=attempts,
            last_error=last,
            retryable=retryable,
            retry_at=retry_at,
        )


class Retrier(_Loop):
    """Runs one attempt function until its answer is final (see the module docstring)."""

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
        random: Callable[[float, float], float] = _random.uniform,
    ) -> None:
        super().__init__(policy, clock=clock, now=now, random=random)
        self._sleep = sleep

    def run(
        self,
        attempt: Callable[[], httpx.Response],
        *,
        destination: str | None = None,
        request_id: str | None = None,
        budget: Budget | None = None,
    ) -> Outcome:
        """Call ``attempt`` until it returns a non-retryable status; raise
        :class:`DeliveryError` when a failure cannot be retried or the budget runs out."""
        if budget is None:
            budget = self.budget()
        while True:
            self._begin(budget, destination, request_id)
            try:
                response = attempt()
            except httpx.TransportError as error:
                try:
                    wait = self._delay(budget, error, destination, request_id)
                except DeliveryError as final:
                    raise final from error
            else:
                if not self.policy.retries_status(response.status_code):
                    return self._done(budget, response)
                wait = self._delay(budget, response, destination, request_id)
            self._sleep(wait)


class AsyncRetrier(_Loop):
    """:class:`Retrier` for coroutines: ``attempt`` and ``sleep`` are awaited."""

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
        random: Callable[[float, float], float] = _random.uniform,
    ) -> None:
        super().__init__(policy, clock=clock, now=now, random=random)
        self._sleep = sleep

    async def run(
        self,
        attempt: Callable[[], Awaitable[httpx.Response]],
        *,
        destination: str | None = None,
        request_id: str | None = None,
        budget: Budget | None = None,
    ) -> Outcome:
        """As :meth:`Retrier.run`, awaiting ``attempt`` and the waits."""
        if budget is None:
            budget = self.budget()
        while True:
            self._begin(budget, destination, request_id)
            try:
                response = await attempt()
            except httpx.TransportError as error:
                try:
                    wait = self._delay(budget, error, destination, request_id)
                except DeliveryError as final:
                    raise final from error
            else:
                if not self.policy.retries_status(response.status_code):
                    return self._done(budget, response)
                wait = self._delay(budget, response, destination, request_id)
            await self._sleep(wait)
