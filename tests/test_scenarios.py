"""The analyst scenarios under examples/scenarios/, each run as the real CLI would run it.

Every folder there is discovered (a folder added later is picked up with no change here):
``tagengine check`` and ``tagengine test`` must pass, with as many passing tests as the folder
has ``test`` blocks, and ``tagengine run --dry-run --json`` must replay its ``events.jsonl``.
For the scenarios known here, the sends of the replay are checked against values computed in
this file from the same ``events.jsonl`` (sums, joins, digests), not copied from the output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "examples" / "scenarios"
FOLDERS = sorted(
    p.name for p in SCENARIOS.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
)
KNOWN = ["cart", "cmp-flags", "consent", "lead-form", "spa", "video"]

TEST_BLOCK = re.compile(r'^\s*test\s+"', re.MULTILINE)
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$", re.MULTILINE)
CHECKED = re.compile(r"^(\d+) rules?, (\d+) elements?, (\d+) tests? in (\d+) files?$", re.MULTILINE)


def tagengine(*args: str) -> subprocess.CompletedProcess[str]:
    """``tagengine ARGS`` as a real process, from the repository root, with plain output."""
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def rel(name: str) -> str:
    return str((SCENARIOS / name).relative_to(ROOT))


def count_tests(name: str) -> int:
    """How many ``test "…" {`` blocks the folder's rule files hold, counted in their text."""
    return sum(len(TEST_BLOCK.findall(p.read_text())) for p in (SCENARIOS / name).glob("*.rules"))


def pushes(name: str) -> list[tuple[str, dict[str, Any]]]:
    """(session, push) of each line of the folder's events.jsonl."""
    out = []
    for line in (SCENARIOS / name / "events.jsonl").read_text().splitlines():
        if line.strip():
            envelope = json.loads(line)
            out.append((envelope.get("session", "default"), envelope["push"]))
    return out


@cache
def replay(name: str) -> tuple[dict[str, Any], ...]:
    """The ``--json`` lines of ``tagengine run --dry-run --json`` over the folder's events."""
    done = tagengine(
        "run", "--rules", rel(name), "--dry-run", "--json", f"{rel(name)}/events.jsonl"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return tuple(json.loads(line) for line in done.stdout.splitlines() if line.strip())


def sends(name: str, rule: str, destination: str = "edge") -> list[tuple[str, dict[str, Any]]]:
    """(session, event) of each send of ``rule`` to ``destination`` in the replay, in order:
    Edge's ``event`` object, Sitecore's whole body."""
    out = []
    for line in replay(name):
        for send in line["sends"]:
            if send["rule"] == rule and send["destination"] == destination:
                body = send["body"]
                out.append((line["session"], body["event"] if destination == "edge" else body))
    return out


def statuses(name: str, rule: str) -> list[str | None]:
    """The status of ``rule`` on each line of the replay (``None`` when not considered)."""
    return [
        next((r["status"] for r in line["rules"] if r["rule"] == rule), None)
        for line in replay(name)
    ]


# ---------------------------------------------------------------- every folder


def test_the_scenarios_are_there() -> None:
    assert set(KNOWN) <= set(FOLDERS), FOLDERS


@pytest.mark.parametrize("name", FOLDERS)
def test_a_scenario_folder_is_complete(name: str) -> None:
    folder = SCENARIOS / name
    assert (folder / "settings.rules").is_file()
    assert (folder / "README.md").is_file()
    assert (folder / "events.jsonl").is_file()
    assert f"tagengine test examples/scenarios/{name}" in (folder / "README.md").read_text()
    assert count_tests(name) >= 3, "a scenario comes with its tests"


@pytest.mark.parametrize("name", FOLDERS)
def test_a_scenario_checks(name: str) -> None:
    # --strict: an example is written without a warning (no unused element, no untested rule)
    done = tagengine("check", "--strict", rel(name))
    assert done.returncode == 0, done.stdout + done.stderr
    found = CHECKED.search(done.stdout)
    assert found, done.stdout
    assert int(found[3]) == count_tests(name)
    assert int(found[4]) == len(list((SCENARIOS / name).glob("*.rules")))


@pytest.mark.parametrize("name", FOLDERS)
def test_a_scenarios_tests_pass(name: str) -> None:
    done = tagengine("test", rel(name))
    assert done.returncode == 0, done.stdout + done.stderr
    found = SUMMARY.search(done.stdout)
    assert found, done.stdout
    assert (int(found[1]), int(found[2])) == (count_tests(name), 0), done.stdout
    assert done.stdout.count("PASS ") == count_tests(name)
    assert "FAIL " not in done.stdout


@pytest.mark.parametrize("name", FOLDERS)
def test_a_scenarios_events_replay(name: str) -> None:
    lines = replay(name)
    assert len(lines) == len(pushes(name))
    assert all("error" not in line for line in lines)
    assert [line["session"] for line in lines] == [session for session, _ in pushes(name)]
    assert all(r["status"] != "failed" for line in lines for r in line["rules"])


# ---------------------------------------------------------------- video


def test_video_milestones_once_per_video_and_session() -> None:
    # What should go out, worked out from the pushes: the video is the last one pushed in the
    # session, and a milestone counts once per (session, video, milestone).
    expected: list[tuple[str, str, int]] = []
    current: dict[str, str] = {}
    for session, push in pushes("video"):
        if "video" in push:
            current[session] = push["video"]["id"]
        milestone = push.get("eventInfo", {}).get("milestone")
        if push.get("event") == "video.progress" and milestone is not None:
            key = (session, current[session], int(milestone))
            if key not in expected:
                expected.append(key)
    sent = [
        (
            session,
            event["xdm"]["_spinair"]["video"]["id"],
            event["xdm"]["_spinair"]["video"]["milestone"],
        )
        for session, event in sends("video", "Video milestone")
    ]
    assert sent == expected
    assert len(set(sent)) == len(sent)
    # a second session sends the first video's 25 % again
    assert ("visit-1", "vid-101", 25) in sent and ("visit-2", "vid-101", 25) in sent
    # the repeats were limited, not dropped for another reason
    progress = [
        status
        for status, (_, push) in zip(
            statuses("video", "Video milestone"), pushes("video"), strict=True
        )
        if push.get("event") == "video.progress"
    ]
    assert progress.count("fired") == len(expected)
    assert progress.count("limited") == len(progress) - len(expected) > 0
    for _, event in sends("video", "Video milestone"):
        milestone = event["xdm"]["_spinair"]["video"]["milestone"]
        assert event["data"]["__adobe"]["analytics"]["eVar21"] == f"{milestone}%"


def test_video_starts_and_completes_once_per_video() -> None:
    starts = [(s, e["xdm"]["_spinair"]["video"]["id"]) for s, e in sends("video", "Video start")]
    assert starts == [("visit-1", "vid-101"), ("visit-1", "vid-202"), ("visit-2", "vid-101")]
    completes = [
        (s, e["xdm"]["_spinair"]["video"]["id"]) for s, e in sends("video", "Video complete")
    ]
    assert completes == [("visit-1", "vid-202")]
    first = sends("video", "Video start")[0][1]
    pushed = next(p["video"] for _, p in pushes("video") if "video" in p)
    assert first["xdm"]["_spinair"]["video"]["name"] == " ".join(pushed["name"].split())
    assert first["xdm"]["_spinair"]["video"]["length"] == round(pushed["length"])


# ---------------------------------------------------------------- cart


def cart_states() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(session, event, cart as merged so far) of each named push of the cart replay: ACDL
    merges objects key by key and replaces arrays, which is all the cart pushes need."""
    carts: dict[str, dict[str, Any]] = {}
    for session, push in pushes("cart"):
        if "cart" in push:
            carts.setdefault(session, {}).update(push["cart"])
        if "event" in push:
            yield session, push["event"], dict(carts.get(session, {}))


def summary(cart: dict[str, Any]) -> dict[str, Any]:
    items = cart.get("items", [])
    skus = [i["sku"] for i in items if i.get("sku") is not None]
    prices = [float(i["price"]) for i in items if i.get("price") is not None]
    categories: list[str] = []
    for item in items:
        if item.get("category") is not None and item["category"] not in categories:
            categories.append(item["category"])
    units = sum(int(i["qty"]) for i in items)
    total = float(cart.get("total", 0))
    if not items:
        shipping = "none"
    elif units > 5:
        shipping = "freight"
    elif total >= 100:
        shipping = "free"
    else:
        shipping = "standard"
    return {
        "lines": len(items),
        "units": units,
        "skus": ",".join(skus),
        "categories": categories,
        "minPrice": min(prices) if prices else None,
        "maxPrice": max(prices) if prices else None,
        "total": round(total, 2),
        "shipping": shipping,
    }


def test_cart_summaries_match_the_pushed_carts() -> None:
    views = [summary(cart) for _, event, cart in cart_states() if event == "cart.view"]
    checkouts = [
        summary(cart)
        for _, event, cart in cart_states()
        if event == "checkout.start" and cart.get("items")
    ]
    sent_views = [e["data"]["cart"] for _, e in sends("cart", "Cart view")]
    sent_checkouts = [e["data"]["cart"] for _, e in sends("cart", "Checkout start")]
    for sent, expected in [
        *zip(sent_views, views, strict=True),
        *zip(sent_checkouts, checkouts, strict=True),
    ]:
        assert {key: sent.get(key) for key in expected} == expected
    # the six-item cart: more than five lines, all of them summed and joined
    six = next(s for s in sent_views if s["lines"] == 6)
    items = next(c["items"] for _, e, c in cart_states() if len(c.get("items", [])) == 6)
    assert six["units"] == sum(i["qty"] for i in items) == 9
    assert six["skus"].split(",") == [i["sku"] for i in items]
    assert six["maxPrice"] == 189 and six["minPrice"] == 9.9


def test_cart_checkout_goes_to_sitecore_and_not_for_an_empty_cart() -> None:
    sitecore = sends("cart", "Checkout start", "sitecore")
    assert [s for s, _ in sitecore] == ["cart-1", "cart-2"]
    _, body = sitecore[0]
    assert body["type"] == "CHECKOUT_START"
    assert body["ext"]["units"] == 9
    assert body["ext"]["categories"] == "Running|Socks|Jackets|Accessories"
    _, without_sku = sitecore[1]
    assert without_sku["ext"]["skus"] == "SP-TR-001"  # the gift wrapping has no sku
    assert statuses("cart", "Checkout start")[-1] == "condition_not_met"  # the empty cart


# ---------------------------------------------------------------- spa


def test_spa_page_views_only_on_a_real_route_change() -> None:
    expected: list[str] = []
    path: dict[str, str | None] = {}
    for session, push in pushes("spa"):
        new = (push.get("route") or {}).get("path", path.get(session))
        if new is not None and new != path.get(session):
            expected.append(f"spinair:{push['route']['name'].lower()}")
        path[session] = new
    names = [e["xdm"]["web"]["webPageDetails"]["name"] for _, e in sends("spa", "SPA page view")]
    assert names == expected
    assert len(expected) < sum(1 for _, p in pushes("spa") if "route" in p)  # some were repeats
    sitecore = [b["page"] for _, b in sends("spa", "SPA page view", "sitecore")]
    assert sitecore == expected


def test_spa_click_keeps_the_nav_source_of_its_view() -> None:
    ((_, click),) = sends("spa", "CTA click")
    assert click["xdm"]["web"]["webInteraction"]["name"] == "Add to cart"
    assert click["xdm"]["web"]["webPageDetails"]["name"] == "spinair:product:sp-tr-001"
    assert click["data"]["__adobe"]["analytics"]["eVar40"] == "search"


# ---------------------------------------------------------------- lead form


def test_lead_form_sends_the_digest_of_the_normalised_address() -> None:
    leads = [
        p["form"]["email"]
        for _, p in pushes("lead-form")
        if p.get("form", {}).get("id") == "contact-sales"
    ]
    assert leads == [" Jane.Doe@Example.COM ", "jane.doe@example.com"]
    digest = hashlib.sha256(b"jane.doe@example.com").hexdigest()
    for email in leads:
        assert hashlib.sha256(email.strip().lower().encode()).hexdigest() == digest
    edge = [
        e["xdm"]["identityMap"]["Email_LC_SHA256"][0]["id"]
        for _, e in sends("lead-form", "Lead form submit")
    ]
    sitecore = [
        b["ext"]["emailSha256"] for _, b in sends("lead-form", "Lead form submit", "sitecore")
    ]
    assert edge == sitecore == [digest, digest]


def test_lead_form_never_sends_the_address() -> None:
    addresses = {
        p["form"]["email"].strip().lower()
        for _, p in pushes("lead-form")
        if "email" in p.get("form", {})
    }
    assert addresses == {"jane.doe@example.com", "max@example.org"}
    for line in replay("lead-form"):
        for send in line["sends"]:
            # the body, and the URL decoded (Sitecore's GET carries the event in its query)
            text = (json.dumps(send["body"]) + unquote(send["url"])).lower()
            assert not any(address in text for address in addresses), send
            assert "7946 0958" not in text and "79460958" not in text
    _, event = sends("lead-form", "Lead form submit")[0]
    assert event["xdm"]["_spinair"]["lead"]["message"] == (
        "Call me on [redacted] or write to [redacted] before 2026-12-05."
    )
    assert statuses("lead-form", "Lead form submit") == [
        None,
        "blocked",
        "fired",
        None,
        "fired",
        None,
        "condition_not_met",
    ]


# ---------------------------------------------------------------- consent

# The rules of the consent scenario that meet both guards, by the event each listens to.
CONSENT_GUARDED = {
    "page.view": "Page view",
    "product.view": "Product view",
    "cart.add": "Add to cart",
    "order.complete": "Purchase",
    "search.results": "Site search",
    "video.start": "Video start",
    "video.complete": "Video complete",
    "form.submit": "Newsletter sign-up",
    "link.click": "Link click",
}


def consent_lines() -> list[tuple[str, dict[str, Any], bool, Any]]:
    """(session, push, bot, consent.analytics as merged so far) of each line of the consent
    replay: the bot verdict from the envelope's context, the flag as the CMP last wrote it."""
    out: list[tuple[str, dict[str, Any], bool, Any]] = []
    flags: dict[str, dict[str, Any]] = {}
    for line in (SCENARIOS / "consent" / "events.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        envelope = json.loads(line)
        session, push = envelope.get("session", "default"), envelope["push"]
        if "consent" in push:
            flags.setdefault(session, {}).update(push["consent"])
        bot = bool((envelope.get("context") or {}).get("bot", False))
        out.append((session, push, bot, flags.get(session, {}).get("analytics")))
    return out


def test_consent_nothing_is_sent_without_consent_or_for_a_bot() -> None:
    lines = consent_lines()
    assert len(lines) == len(replay("consent"))
    seen = {"fired": 0, "bots": 0, "consent": 0}
    for (session, push, bot, analytics), line in zip(lines, replay("consent"), strict=True):
        assert line["session"] == session
        rule = CONSENT_GUARDED.get(push.get("event", ""))
        sent = {send["rule"] for send in line["sends"]}
        if rule is None:
            assert sent <= {"Consent choice"}, line
            continue
        (outcome,) = [r for r in line["rules"] if r["rule"] == rule]
        if bot:  # the bots guard comes first, whatever the data layer says
            assert outcome["status"] == "blocked"
            assert (
                outcome["reason"]
                == "guard 'bots': unless request.bot was true (request.bot = true)"
            )
            seen["bots"] += 1
        elif analytics is not True:
            assert outcome["status"] == "condition_not_met"
            assert outcome["reason"] == (
                "guard 'consent': when state.consent.analytics was false "
                f"(state.consent.analytics = {json.dumps(analytics)})"
            )
            seen["consent"] += 1
        else:
            assert not (outcome.get("reason") or "").startswith("guard "), outcome
            seen["fired"] += outcome["status"] == "fired"
        if bot or analytics is not True:
            assert line["sends"] == [], line
    # every kind is in the sample: sent, kept out by the consent guard, kept out as a bot
    assert all(count > 0 for count in seen.values()), seen


def test_consent_page_views_and_purchase_follow_the_choice() -> None:
    expected_pages = [
        (session, push["page"]["name"])
        for session, push, bot, analytics in consent_lines()
        if push.get("event") == "page.view" and not bot and analytics is True
    ]
    sent = [
        (s, e["xdm"]["web"]["webPageDetails"]["name"]) for s, e in sends("consent", "Page view")
    ]
    assert sent == expected_pages
    sitecore = [(s, b["page"]) for s, b in sends("consent", "Page view", "sitecore")]
    assert sitecore == expected_pages
    # the page each session saw before choosing is never sent, not even after accepting
    first: dict[str, str] = {}
    for session, push, _, _ in consent_lines():
        if push.get("event") == "page.view":
            first.setdefault(session, push["page"]["name"])
    assert ("visit-1", first["visit-1"]) not in sent
    orders = {
        session: push["order"]
        for session, push, bot, analytics in consent_lines()
        if "order" in push and not bot and analytics is True
    }
    purchases = [
        (
            s,
            e["xdm"]["commerce"]["order"]["purchaseID"],
            e["xdm"]["commerce"]["order"]["priceTotal"],
        )
        for s, e in sends("consent", "Purchase")
    ]
    assert purchases == [
        (session, order["id"].strip().upper(), round(float(order["total"]), 2))
        for session, order in orders.items()
    ]


def test_consent_the_choice_is_recorded_whatever_it_is_but_not_for_a_bot() -> None:
    def yes_no(flag: Any) -> str:
        return "y" if flag is True else "n"

    expected = [
        (
            session,
            yes_no(push["consent"].get("analytics")),
            yes_no(push["consent"].get("marketing")),
            push.get("eventInfo", {}).get("method", "banner").lower(),
        )
        for session, push, bot, _ in consent_lines()
        if push.get("event") == "consent.update" and not bot
    ]
    sent = [
        (
            s,
            e["xdm"]["consents"]["collect"]["val"],
            e["xdm"]["consents"]["personalize"]["content"]["val"],
            e["data"]["consent"]["method"],
        )
        for s, e in sends("consent", "Consent choice")
    ]
    assert sent == expected
    assert ("visit-2", "n", "n", "banner") in sent  # a refusal goes out: skip guard "consent"
    assert all(
        e["xdm"]["eventType"] == "consent.preferences"
        for _, e in sends("consent", "Consent choice")
    )
    # the crawler's choice is not recorded: the bots guard is not skipped
    crawler = [
        status
        for status, (_, push, bot, _) in zip(
            statuses("consent", "Consent choice"), consent_lines(), strict=True
        )
        if bot and push.get("event") == "consent.update"
    ]
    assert crawler == ["blocked"]
    # the consent { } block (default "in", no path) never holds or drops a send of the replay
    assert all("consent" not in send for line in replay("consent") for send in line["sends"])


# ---------------------------------------------------------------- cmp-flags


def says_yes(value: Any) -> bool:
    """A flag as the CMP and the back end write it: text that is blank, says no or is a zero
    is no, as are null, false and 0."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "false", "no", "off"):
            return False
        try:
            return float(text) != 0
        except ValueError:
            return True
    return bool(value)


def flag_states() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(session, push, data layer as merged so far) of each line of the cmp-flags replay:
    ACDL merges objects key by key (null deletes), which is all these pushes need."""
    layers: dict[str, dict[str, Any]] = {}
    for session, push in pushes("cmp-flags"):
        layer = layers.setdefault(session, {})
        for key, value in push.items():
            if key in ("event", "eventInfo"):
                continue
            if isinstance(value, dict):
                merged = {**layer.get(key, {}), **value}
                layer[key] = {k: v for k, v in merged.items() if v is not None}
            else:
                layer[key] = value
        yield session, push, {k: dict(v) for k, v in layer.items()}


def test_cmp_flags_text_flags_decide_the_page_views() -> None:
    assert {p["consent"]["analytics"] for _, p in pushes("cmp-flags") if "consent" in p} >= {
        "true",
        "false",
        "0",
        "no",
    }
    expected: list[tuple[str, str, bool, bool, int, bool]] = []
    for session, push, layer in flag_states():
        if push.get("event") != "page.view":
            continue
        consent, user, page = layer.get("consent", {}), layer.get("user", {}), layer["page"]
        if says_yes(consent.get("analytics")) and not says_yes(user.get("internal")):
            status = int(page.get("status", 200))
            expected.append(
                (
                    session,
                    page["name"],
                    page["home"] == "true",
                    status >= 400,
                    status,
                    says_yes(user.get("loggedIn")),
                )
            )
    edge = sends("cmp-flags", "Page view")
    sitecore = sends("cmp-flags", "Page view", "sitecore")
    sent = [
        (
            s,
            e["xdm"]["web"]["webPageDetails"]["name"],
            e["xdm"]["web"]["webPageDetails"]["isHomePage"],
            e["xdm"]["web"]["webPageDetails"]["isErrorPage"],
            b["ext"]["status"],
            b["ext"]["loggedIn"],
        )
        for (s, e), (_, b) in zip(edge, sitecore, strict=True)
    ]
    assert sent == expected
    # real booleans and numbers in the bodies, not the text the data layer carried
    for row in sent:
        assert [type(v) for v in row[2:]] == [bool, bool, int, bool], row
    # the CMP's "false" all visit long, and the staff member ("1"): no page view at all
    assert all(s not in ("flags-2", "flags-5") for s, *_ in sent)


def test_cmp_flags_error_pages_from_a_status_as_text() -> None:
    expected: list[tuple[str, str, int, str]] = []
    for session, push, layer in flag_states():
        page = layer.get("page", {})
        if push.get("event") != "page.view" or int(page.get("status", 200)) not in (404, 410):
            continue
        assert isinstance(page["status"], str)  # "404" as text, compared with == 404
        if says_yes(layer["consent"]["analytics"]) and not says_yes(layer["user"]["internal"]):
            status = int(page["status"])
            expected.append(
                (session, page["url"], status, "not found" if status == 404 else "gone")
            )
    sent = [
        (
            s,
            e["xdm"]["web"]["webPageDetails"]["URL"],
            e["xdm"]["_spinair"]["error"]["status"],
            e["xdm"]["_spinair"]["error"]["kind"],
        )
        for s, e in sends("cmp-flags", "Error page")
    ]
    assert sent == expected
    assert [s for s, *_ in sent] == ["flags-1", "flags-4"]
    assert all(type(status) is int for _, _, status, _ in sent)
    sitecore = [
        (s, b["ext"]["brokenUrl"], b["ext"]["status"])
        for s, b in sends("cmp-flags", "Error page", "sitecore")
    ]
    assert sitecore == [(s, url, status) for s, url, status, _ in expected]


def test_cmp_flags_purchase_ids_join_text_and_numbers() -> None:
    expected: list[tuple[str, str, str, str, float]] = []
    sent_refs: set[tuple[str, str]] = set()
    for session, push, layer in flag_states():
        if push.get("event") != "order.complete":
            continue
        order = layer.get("order", {})
        if not says_yes(layer["consent"]["analytics"]) or "id" not in order:
            continue
        if not says_yes(order.get("paid")) or says_yes(order.get("test")):
            continue
        ref = f"order-{order['id']}"
        if (session, ref) in sent_refs:  # the confirmation page reloaded
            continue
        sent_refs.add((session, ref))
        total = round(float(order["total"]), 2)
        total_text = str(int(total)) if total == int(total) else str(total)
        units = sum(int(item["qty"]) for item in order.get("items", []))
        expected.append(
            (
                session,
                ref,
                f"{order['id']},{order['storeId']}",
                f"purchase,event61={units},event62={total_text}",
                total,
            )
        )
    sent = [
        (
            s,
            e["xdm"]["commerce"]["order"]["purchaseID"],
            e["data"]["__adobe"]["analytics"]["eVar61"],
            e["data"]["__adobe"]["analytics"]["events"],
            e["xdm"]["commerce"]["order"]["priceTotal"],
        )
        for s, e in sends("cmp-flags", "Purchase")
    ]
    assert sent == expected
    # the order service's ids are numbers: joined as text, never added
    assert all(
        isinstance(p["order"]["id"], int)
        for _, p in pushes("cmp-flags")
        if "id" in p.get("order", {})
    )
    assert (
        "flags-1",
        "order-10057",
        "10057,123",
        "purchase,event61=4,event62=182.45",
        182.45,
    ) in sent
    assert [
        (s, b["ext"]["orderRef"], b["ext"]["orderKey"])
        for s, b in sends("cmp-flags", "Purchase", "sitecore")
    ] == [(s, ref, key) for s, ref, key, _, _ in expected]
    # the reload is limited; payment pending ("false") not met; the QA order ("yes") blocked
    outcomes = [status for status in statuses("cmp-flags", "Purchase") if status is not None]
    assert outcomes.count("limited") == 1
    assert outcomes.count("blocked") == 1
    assert outcomes.count("fired") == len(expected)
