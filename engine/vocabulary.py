"""The fixed words of the rules language: keywords, fields, units, statuses.

The checker validates against these lists and draws its "did you mean" suggestions from them.
"""

from __future__ import annotations

KEYWORDS = frozenset(
    [
        "rule",
        "on",
        "when",
        "unless",
        "send",
        "element",
        "test",
        "push",
        "expect",
        "and",
        "or",
        "not",
        "in",
        "contains",
        "matches",
        "starts",
        "ends",
        "with",
        "exists",
        "order",
        "limit",
        "per",
        "sample",
        "keep",
        "change",
        "from",
        "true",
        "false",
        "null",
        "if",
    ]
)
RESERVED_NAMES = frozenset({"state", "event", "env", "request"})

REQUEST_FIELDS = ("bot", "user_agent", "accept_language", "referer")
"""What rules read of the visitor's request behind a push (``request.bot``…), from its
``VisitorContext``."""

KEEP_SCOPES = ("pageview", "session", "visitor")
LIMIT_UNITS = ("session", "visitor", "minute", "hour", "day")
DESTINATIONS = {"event": "edge", "sitecore": "sitecore"}  # send NAME → settings block
TEST_STATUSES = ("fired", "condition_not_met", "blocked", "sampled_out", "limited", "failed")

EDGE_FIELDS = (
    "type",
    "xdm",
    "data",
    "documentUnloading",
    "renderDecisions",
    "edgeConfigOverrides",
    "personalization",
    "decisionScopes",
    "datasetId",
    "mergeId",
    "identityMap",
    "propositions",  # ours: the propositions a notification (or includeRenderedPropositions) is about
)
PERSONALIZATION_FIELDS = (
    "decisionScopes",
    "surfaces",
    "sendDisplayEvent",
    "includeRenderedPropositions",
    "defaultPersonalizationEnabled",
    "decisionContext",
)

SITECORE_FIELDS = (
    "type",
    "channel",
    "language",
    "currency",
    "page",
    "pos",
    "ext",
    "identifiers",
    "email",
    "first_name",
    "last_name",
    "firstname",
    "lastname",
    "title",
    "gender",
    "dob",
    "mobile",
    "phone",
    "street",
    "city",
    "state",
    "country",
    "postal_code",
    "session_data",
    "referrer",
    "utm_campaign",
    "utm_source",
    "utm_medium",
    "utm_content",
    "utm_term",
    "product",
    "product_name",
    "product_type",
    "reference_id",
    "status",
    "pay_type",
    "order",
    "page_variant_id",
    "requested_at",
)
SITECORE_ENGINE_FIELDS = ("browser_id", "client_key")  # set by the engine, never by a rule
SITECORE_STANDARD_TYPES = frozenset(
    {
        "VIEW",
        "IDENTITY",
        "ADD",
        "CONFIRM",
        "CHECKOUT",
        "PAYMENT",
        "SEARCH",
        "CLEAR_CART",
        "ORDER_CHECKOUT",
        "ADD_CONSUMERS",
        "ADD_CONTACTS",
        "FORM",
    }
)
# Internal Sitecore types a custom event must not use (prefixes).
SITECORE_INTERNAL_PREFIXES = (
    "SC_",
    "CAMPAIGN_TRACKING",
    "FEEDBACK",
    "INTERACTION",
    "SUBSCRIPTION",
    "TRACKING",
)
SITECORE_EXT_LIMIT = 50
