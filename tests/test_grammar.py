"""The grammar file and the parser: conflict-free, and every construct of the language."""

from __future__ import annotations

from textwrap import dedent

import lark

from engine import ast
from engine.parser import GRAMMAR, Newlines, parse


def test_grammar_has_no_conflicts_in_strict_mode() -> None:
    # strict=True raises on any shift/reduce conflict and on colliding terminals.
    lark.Lark(GRAMMAR, parser="lalr", lexer="contextual", strict=True, postlex=Newlines())


def parsed(text: str) -> tuple[ast.Statement, ...]:
    result = parse(dedent(text), "g.rules")
    assert result.diagnostics == [], [d.render() for d in result.diagnostics]
    assert result.file is not None
    return result.file.statements


def only_rule(text: str) -> ast.Rule:
    (rule,) = parsed(text)
    assert isinstance(rule, ast.Rule)
    return rule


def test_every_statement_kind() -> None:
    statements = parsed(
        """\
        # settings
        edge { datastream: "d", url: env("EDGE_URL", "https://edge.adobedc.net") }
        sitecore { client_key: env("KEY", "k"); pos: "p" }
        datalayer { merge: "gtm" }
        element page_type = state.page.type | lower | default "unknown"
        element tier = state.user.tier keep visitor
        rule "Purchase" order 10 {
          on "commerce.purchase", "commerce.*", change state.cart.total
          when page_type == "checkout"
          unless state.user.internal
          sample 12.5%
          limit 1 per session
          limit 3 per day
          send event { type: "commerce.purchases" }
          send sitecore { type: "CONFIRM" }
          push { event: "after.purchase" }
        }
        test "purchase" {
          session "visitor-1"
          push { event: "commerce.purchase", cart: { total: 1 } }
          expect send event from "Purchase" { xdm.commerce.order.priceTotal: 1, data["a.b"][0]: "x" }
          expect send sitecore { type: "CONFIRM" }
          expect 1 send from "Purchase"
          expect 2 sends event
          expect no send sitecore from "Purchase"
          expect rule "Purchase" fired
        }
        """
    )
    kinds = [type(s).__name__ for s in statements]
    assert kinds == ["Settings", "Settings", "Settings", "Element", "Element", "Rule", "Test"]
    rule = statements[5]
    assert isinstance(rule, ast.Rule)
    assert rule.order == 10
    assert [type(t).__name__ for t in rule.triggers] == [
        "EventTrigger",
        "EventTrigger",
        "ChangeTrigger",
    ]
    assert isinstance(rule.triggers[2], ast.ChangeTrigger) and rule.triggers[2].path == (
        "cart",
        "total",
    )
    assert [c.negated for c in rule.conditions] == [False, True]
    assert rule.samples[0].percent == 12.5
    assert [(lim.count, lim.unit) for lim in rule.limits] == [(1, "session"), (3, "day")]
    assert [type(a).__name__ for a in rule.actions] == ["Send", "Send", "Push"]
    test = statements[6]
    assert isinstance(test, ast.Test)
    steps = test.steps
    assert isinstance(steps[0], ast.TestSession) and steps[0].session == "visitor-1"
    send = steps[2]
    assert isinstance(send, ast.ExpectSend) and send.rule == "Purchase"
    assert [f.path for f in send.fields] == [
        ("xdm", "commerce", "order", "priceTotal"),
        ("data", "a.b", 0),
    ]
    counts = [s for s in steps if isinstance(s, ast.ExpectCount)]
    assert [(c.count, c.destination, c.rule) for c in counts] == [
        (1, None, "Purchase"),
        (2, "event", None),
        (0, "sitecore", "Purchase"),
    ]
    status = steps[-1]
    assert isinstance(status, ast.ExpectRule) and status.status == "fired"


def test_operator_precedence() -> None:
    (element,) = parsed("element x = not a == 1 or b and c > 2 + 3 * -d | round 1\n")
    assert isinstance(element, ast.Element)
    expr = element.expr
    assert isinstance(expr, ast.Logical) and expr.op == "or"
    left, right = expr.operands
    assert isinstance(left, ast.Unary) and left.op == "not"
    assert isinstance(left.operand, ast.Binary) and left.operand.op == "=="
    assert isinstance(right, ast.Logical) and right.op == "and"
    compare = right.operands[1]
    assert isinstance(compare, ast.Binary) and compare.op == ">"
    total = compare.right
    assert isinstance(total, ast.Binary) and total.op == "+"
    product = total.right
    assert isinstance(product, ast.Binary) and product.op == "*"
    negated = product.right
    assert isinstance(negated, ast.Unary) and negated.op == "-"
    assert isinstance(negated.operand, ast.Filter) and negated.operand.name == "round"


def test_comparison_words() -> None:
    rule = only_rule(
        """\
        rule "R" {
          on "x"
          when a contains "b"
          when a starts with "b"
          when a ends with "b"
          when a in ["b", "c"]
          when a not in ["b"]
          when a matches "(?i)^b"
          when a exists
          send event { type: "t" }
        }
        """
    )
    ops = []
    for condition in rule.conditions:
        expr = condition.expr
        if isinstance(expr, ast.Binary):
            ops.append(expr.op)
        else:
            ops.append(type(expr).__name__ if not isinstance(expr, ast.Unary) else expr.op)
    assert ops == ["contains", "starts with", "ends with", "in", "not in", "Matches", "exists"]


def test_keywords_are_names_after_a_dot_and_as_keys() -> None:
    (element,) = parsed("element x = event.event == state.order.limit\n")
    assert isinstance(element, ast.Element) and isinstance(element.expr, ast.Binary)
    left, right = element.expr.left, element.expr.right
    assert isinstance(left, ast.Ref) and left.root == "event" and left.path == ("event",)
    assert isinstance(right, ast.Ref) and right.path == ("order", "limit")
    (element,) = parsed("element o = { session: 1, order: 2, when: 3 }\n")
    assert isinstance(element, ast.Element) and isinstance(element.expr, ast.ObjectExpr)
    assert [p.key for p in element.expr.pairs] == [("session",), ("order",), ("when",)]


def test_newlines_and_continuations() -> None:
    rule = only_rule(
        """\
        rule "R" {
          on "a",
             "b"
          when state.x > 1
            and state.y < 2
            or state.z
          when (state.p
                + 1) > 2
          when state.name
            | lower
            | trim == "x"
          send event {
            xdm: {
              a: [1,
                  2]
              b: 2,

              # a comment line inside an object
              c: 3,
            }
          }; push { event: "next" }
        }
        """
    )
    assert [t.pattern for t in rule.triggers if isinstance(t, ast.EventTrigger)] == ["a", "b"]
    assert len(rule.conditions) == 3
    first = rule.conditions[0].expr
    assert isinstance(first, ast.Logical) and first.op == "or"
    assert rule.conditions[0].source == "state.x > 1 and state.y < 2 or state.z"
    send = rule.actions[0]
    assert isinstance(send, ast.Send)
    xdm = send.fields.pairs[0].value
    assert isinstance(xdm, ast.ObjectExpr) and [p.key for p in xdm.pairs] == [
        ("a",),
        ("b",),
        ("c",),
    ]
    assert isinstance(rule.actions[1], ast.Push)


def test_paths_and_literals() -> None:
    (element,) = parsed('element x = state.items[0]["a.b"].c\n')
    assert isinstance(element, ast.Element) and isinstance(element.expr, ast.Ref)
    assert element.expr.path == ("items", 0, "a.b", "c")
    (element,) = parsed('element x = [1, -2, 3.5, 1e3, "s\\n\\u00e9", true, false, null]\n')
    assert isinstance(element, ast.Element) and isinstance(element.expr, ast.ListExpr)
    values = [i.value for i in element.expr.items if isinstance(i, ast.Literal)]
    assert values == [1, -2, 3.5, 1000.0, "s\né", True, False, None]
    (element,) = parsed("element x = (state.items | first).sku\n")
    assert isinstance(element, ast.Element) and isinstance(element.expr, ast.GetPath)


def test_string_tokens() -> None:
    (element,) = parsed('element x = "Order %order_id% (100% sure, %%) %state.page.name%"\n')
    assert isinstance(element, ast.Element) and isinstance(element.expr, ast.Literal)
    parts = element.expr.parts
    assert parts is not None
    texts = [p if isinstance(p, str) else p.ref for p in parts]
    assert texts[0] == "Order "
    assert texts[2] == " (100% sure, %) "
    first, last = texts[1], texts[3]
    assert isinstance(first, ast.Ref) and first.name == "order_id"
    assert isinstance(last, ast.Ref) and last.root == "state" and last.path == ("page", "name")
    (element,) = parsed('element y = "50% off"\n')
    assert isinstance(element, ast.Element) and isinstance(element.expr, ast.Literal)
    assert element.expr.parts is None and element.expr.value == "50% off"


def test_spans_point_at_the_source() -> None:
    rule = only_rule(
        'rule "R" {\n  on "x"\n  when  cart_total > 10\n  send event { type: "t" }\n}\n'
    )
    condition = rule.conditions[0]
    assert isinstance(condition.expr, ast.Binary)
    ref = condition.expr.left
    assert (ref.span.line, ref.span.column, ref.span.end_column) == (3, 9, 19)
    assert condition.expr.op_span.column == 20
    assert rule.span.line == 1 and rule.span.end_line == 5
    assert all(s.file == "g.rules" for s in (rule.span, ref.span))
