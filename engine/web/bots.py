"""Which requests come from bots: :func:`bot_match`, over ``crawlerdetect``'s user-agent list
(a Python port of JayBizzle's CrawlerDetect, the list most PHP and JS bot filters use, kept up
to date upstream).

A request without a ``User-Agent`` is a bot too: every browser sends one (``sendBeacon`` and
``fetch(keepalive)`` included). Headless browsers (``HeadlessChrome``) are bots for the list:
a test driving one through the collect endpoint sets a browser's user agent, or
``bots="allow"``.
"""

from __future__ import annotations

from functools import lru_cache

from crawlerdetect import CrawlerDetect

__all__ = ["NO_USER_AGENT", "bot_match"]

NO_USER_AGENT = "no user-agent"
_CACHE = 4096  # distinct user agents remembered: real traffic has few


@lru_cache(maxsize=_CACHE)
def _match(user_agent: str) -> str | None:
    # One detector per user agent not seen yet: CrawlerDetect keeps the last match on the
    # instance, so one shared by threads would mix their answers.
    detector = CrawlerDetect()
    if detector.is_crawler(user_agent):
        return str(detector.get_matches() or "crawler")
    return None


def bot_match(user_agent: str | None) -> str | None:
    """What marks ``user_agent`` as a bot (the list's matching word, or ``"no user-agent"``),
    or ``None`` for a browser."""
    text = (user_agent or "").strip()
    if not text:
        return NO_USER_AGENT
    return _match(text[:1024])
