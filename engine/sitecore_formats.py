"""The value formats the Sitecore Stream API documents (and the Cloud SDK checks), shared by
the settings, the load-time checker and the request builder so that a literal refused at load
and a data-layer value refused at run time get the same message.

Each ``*_problem`` function returns ``None`` for a good value, otherwise the message without
its prefix, e.g. ``'email' must be an e-mail address such as "jane@example.com", not "jane"``;
the checker prefixes ``sitecore``, the builder ``rule 'NAME': sitecore``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from engine.diagnostics import did_you_mean

__all__ = [
    "CHECKED_PATHS",
    "ORDER_STATUSES",
    "card_type_problem",
    "currency_code",
    "currency_problem",
    "field_problem",
    "language_code",
    "language_problem",
    "show",
]

# The documented order statuses (CHECKOUT `status`, ORDER_CHECKOUT `order.status`).
ORDER_STATUSES = ("PURCHASED", "PAYMENT_PENDING", "CONFIRMED", "CANCELLED", "REFUNDED")

# BCP 47 in the shape Intl.Locale takes it: a primary subtag, then subtags of 1-8
# alphanumerics. `_` is also taken as a separator (ours: POSIX/Java locales such as `en_GB`
# are common in data layers). Sitecore wants ISO 639-1, so the primary subtag has two letters.
_SUBTAG = re.compile(r"[A-Za-z0-9]{1,8}")
_PRIMARY = re.compile(r"[A-Za-z]{2}")
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_UPPER_CURRENCY = re.compile(r"[A-Z]{3}")
# The Cloud SDK's rule (utils isValidEmail): something, @, something, a dot, something; no
# blanks and a single @.
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")
# ISO 8601 calendar date, optionally with a time (minutes at least) and a UTC offset: the
# docs' examples are "1984-04-15" and "1983-04-15T00:00"; the calendar check is done by
# datetime below.
_ISO_DATE = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
)


def show(value: Any) -> str:
    """A value as it appears in a message: JSON text, cut at 60 characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def language_code(tag: Any) -> str | None:
    """The upper-case ISO 639-1 code a language tag stands for (``en-GB`` → ``EN``), as the
    Cloud SDK sends ``Intl.Locale(tag).language`` upper-cased; ``None`` for what is not a
    language tag with a two-letter primary subtag."""
    if not isinstance(tag, str):
        return None
    return _language_of(tag)


@lru_cache(maxsize=1024)  # a property has a handful of languages, and this runs per send
def _language_of(tag: str) -> str | None:
    parts = re.split(r"[-_]", tag.strip())
    if not _PRIMARY.fullmatch(parts[0]) or not all(_SUBTAG.fullmatch(p) for p in parts[1:]):
        return None
    return parts[0].upper()


def currency_code(value: Any) -> str | None:
    """``value`` upper-cased when it is three letters (an ISO 4217 code), else ``None``."""
    return _currency_of(value) if isinstance(value, str) else None


@lru_cache(maxsize=1024)
def _currency_of(value: str) -> str | None:
    if _CURRENCY.fullmatch(value.strip()):
        return value.strip().upper()
    return None


def language_problem(value: Any, name: str = "language") -> str:
    return (
        f'\'{name}\' must be a language tag such as "en" or "en-GB" (ISO 639-1 code '
        f"first), not {show(value)}"
    )


def currency_problem(value: Any, name: str = "currency") -> str:
    return f"'{name}' must be an ISO 4217 currency code such as \"EUR\", not {show(value)}"


def _is_iso_date(value: str) -> bool:
    if not _ISO_DATE.fullmatch(value):
        return False
    try:
        if "T" in value:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        else:
            date.fromisoformat(value)
    except ValueError:
        return False
    return True


def field_problem(path: tuple[str, ...], value: Any, event_type: str | None) -> str | None:
    """What is wrong with ``value`` at ``path`` of a Sitecore event of ``event_type``, for
    the fields whose format the docs fix: ``email``, ``dob``, CHECKOUT ``status``,
    ``order.status`` and ``order.currencyCode``. ``None`` when it is fine or unchecked."""
    name = ".".join(path)
    if path == ("email",):
        if isinstance(value, str) and _EMAIL.fullmatch(value):
            return None
        return f"'email' must be an e-mail address such as \"jane@example.com\", not {show(value)}"
    if path == ("dob",):
        if isinstance(value, str) and _is_iso_date(value):
            return None
        return (
            '\'dob\' must be an ISO 8601 date such as "1984-04-15" or "1984-04-15T00:00", '
            f"not {show(value)}"
        )
    if path == ("order", "status") or (path == ("status",) and event_type == "CHECKOUT"):
        if value in ORDER_STATUSES:
            return None
        hint = did_you_mean(value, ORDER_STATUSES) if isinstance(value, str) else ""
        return (
            f"'{name}' must be one of {', '.join(ORDER_STATUSES)} (upper case), "
            f"not {show(value)}{hint}"
        )
    if path == ("order", "currencyCode"):
        if isinstance(value, str) and _UPPER_CURRENCY.fullmatch(value):
            return None
        fixed = currency_code(value)
        hint = f" (did you mean '{fixed}'?)" if fixed else ""
        return (
            f"'{name}' must be an upper-case ISO 4217 currency code such as \"EUR\", "
            f"not {show(value)}{hint}"
        )
    return None


CHECKED_PATHS = (("email",), ("dob",), ("status",), ("order", "status"), ("order", "currencyCode"))


def card_type_problem(order: Mapping[str, Any]) -> str | None:
    """The docs' rule for an order: ``cardType`` is required when ``paymentType`` is
    ``"Card"`` (compared without case: the docs only recommend title case)."""
    payment = order.get("paymentType")
    if isinstance(payment, str) and payment.strip().lower() == "card":
        card = order.get("cardType")
        if not (isinstance(card, str) and card.strip()):
            return (
                f"'order.cardType' is required when 'order.paymentType' is {show(payment)} "
                '(e.g. cardType: "Visa")'
            )
    return None
