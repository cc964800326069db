"""What rules read of the visitor's request behind a push (``request.bot``, ``request.user_agent``…):
a guard an analyst writes, sees in the trace and tests; and the collect endpoint's bot verdict
reaching it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from engine import Engine, RuleError, VisitorContext
from engine.testing import run_tests
from engine.web import asgi_app
from tests.conftest import load_text, rendered_errors
from tests.test_collect import serve_asgi

RULES = """
edge {
  datastream: "ds-visitors"
}
rule "Page" {
  on "page.view"
  unless request.bot
  send event { type: "web.webpagedetails.pageViews", data.agent: request.user_agent }
}
"""

CRAWLER = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"


def test_a_rule_reads_the_visitor() -> None:
    with Engine(load_text(RULES), dry_run=True) as engine:
        human = engine.push({"event": "page.view"}, context=VisitorContext(user_agent=BROWSER))
        crawler = engine.push({"event": "page.view"}, session="b", context=VisitorContext(bot=True))
        nobody = engine.push({"event": "page.view"}, session="c")  # no context: not a bot
    assert human.fired == ["Page"] and human.sends[0].body["event"]["data"]["agent"] == BROWSER
    outcome = crawler.outcome("Page")
    assert outcome is not None and outcome.status == "blocked"
    assert outcome.clause == "request.bot"
    assert nobody.fired == ["Page"]


def test_test_blocks_say_who_pushes() -> None:
    tests = """
test "crawlers are not counted" {
  request { bot: true, user_agent: "Googlebot" }
  push { event: "page.view" }
  expect no send
  expect rule "Page" blocked
}
test "people are" {
  request { user_agent: "Firefox" }
  push { event: "page.view" }
  expect send event { data.agent: "Firefox" }
}
"""
    reports = run_tests(load_text(RULES + tests))
    assert [(r.name, r.failures) for r in reports] == [
        ("crawlers are not counted", []),
        ("people are", []),
    ]


def test_what_is_not_known_of_a_visitor_is_a_load_error() -> None:
    errors = rendered_errors(RULES.replace("unless request.bot", "unless request.bott"))
    assert "'request.bott' is not something known of the visitor" in errors[0]
    assert "did you mean 'bot'?" in errors[0]
    bad_test = 'test "t" {\n  request { robot: true }\n  push { event: "x" }\n  expect no send\n}'
    assert "unknown request field 'robot'" in rendered_errors(RULES + bad_test)[0]
    with pytest.raises(RuleError, match="'request' is a reserved name"):
        load_text(RULES + "\nelement request = state.x\n")
    load_text(RULES + "\nelement visitor = state.x\n")  # the analysts' own names stay theirs


@pytest.fixture
def allowing() -> Iterator[str]:
    engine = Engine(load_text(RULES), dry_run=True)
    served = serve_asgi(asgi_app(engine, secret="s", bots="allow"))
    url = next(served)
    try:
        yield url
    finally:
        next(served, None)
        engine.close()


def test_the_endpoints_bot_verdict_reaches_the_rules(allowing: str) -> None:
    body = {"pushes": [{"id": "1", "push": {"event": "page.view"}}]}
    with httpx.Client(headers={"User-Agent": CRAWLER}) as crawler:
        (bot,) = crawler.post(allowing + "/", json=body).json()["results"]
    with httpx.Client(headers={"User-Agent": BROWSER}) as person:
        (human,) = person.post(allowing + "/", json=body).json()["results"]
    assert bot["ok"] and bot["fired"] == [] and bot["sends"] == 0
    assert human["fired"] == ["Page"] and human["sends"] == 1
