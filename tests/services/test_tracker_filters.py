"""The SearchRuns filter language: MLflow's syntax, `or` and parentheses, errors at a column."""

from __future__ import annotations

import pytest

from services.tracker.filters import And, Compare, FilterError, Or, parse_filter, parse_order_by


def test_mlflow_syntax() -> None:
    node = parse_filter(
        'metrics.x > 0.9 and params.y = "z" and tags.t = \'v\' and attributes.status = "FAILED"'
    )
    assert node == And(
        (
            Compare("metrics", "x", ">", 0.9, 1),
            Compare("params", "y", "=", "z", 21),
            Compare("tags", "t", "=", "v", 40),
            Compare("attributes", "status", "=", "FAILED", 57),
        )
    )


def test_or_parentheses_like_ilike_and_quoted_keys() -> None:
    node = parse_filter(
        "(tags.team = 'a' OR tags.team = 'b') and params.`learning rate` LIKE '0.0%' "
        "and run_name ILIKE '%Base%' and params.model NOT LIKE 'x%'"
    )
    assert isinstance(node, And) and isinstance(node.items[0], Or)
    assert node.items[1] == Compare("params", "learning rate", "like", "0.0%", 42)
    assert node.items[2].key == "run_name" and node.items[2].op == "ilike"
    assert node.items[3].op == "not like"
    assert parse_filter("metrics.acc >= 1e-3 or metrics.acc < -2").items[1].value == -2.0


def test_empty_filter_matches_everything() -> None:
    assert parse_filter("   ") is None


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ('metrics.x > "a"', 13, "compares with a number"),
        ("metrics.x >", 12, "unexpected end of filter"),
        ("foo = 1", 1, "unexpected 'foo'"),
        ('params.y > "a"', 1, "params compare with = != LIKE ILIKE"),
        ("(metrics.x > 1", 15, "unexpected end of filter"),
        ("metrics.x = 1 and", 18, "unexpected end of filter"),
        ('status = "DONE"', 10, "status is one of"),
        ("metrics.x ~ 1", 11, "unexpected character '~'"),
        ("params.y = 3", 12, "quote the value"),
        ("start_time > 'yesterday'", 14, "milliseconds since the epoch"),
        ("metrics.x > 1e999", 13, "out of range"),
        ("start_time > 1e20", 14, "years 1 to 9999"),
        ("end_time < -62135596800001", 12, "years 1 to 9999"),
    ],
)
def test_mistakes_are_reported_at_their_column(text: str, column: int, message: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(text)
    assert info.value.column == column and message in info.value.message


def test_limits_on_filter_size() -> None:
    with pytest.raises(FilterError, match="longer than"):
        parse_filter("metrics.x > 1 and " * 1000 + "metrics.x > 1")
    with pytest.raises(FilterError, match="deeper than"):
        parse_filter("(" * 100 + "metrics.x > 1" + ")" * 100)


def test_order_by() -> None:
    assert parse_order_by(["metrics.val_accuracy DESC", "start_time", "params.lr asc"]) == [
        ("metrics", "val_accuracy", True),
        ("attributes", "start_time", False),
        ("params", "lr", False),
    ]
    with pytest.raises(FilterError):
        parse_order_by(["metrics.x sideways"])
    with pytest.raises(FilterError):
        parse_order_by(["colour"])


def test_order_by_names_a_key_after_the_entity() -> None:
    for item in ("metrics.", "params. DESC", "tags."):
        with pytest.raises(FilterError, match="name a key after"):
            parse_order_by([item])


def test_time_bounds_of_a_filter_are_moments_a_run_can_hold() -> None:
    node = parse_filter("start_time >= -62135596800000 and end_time <= 253402300799999")
    assert isinstance(node, And) and node.items[0].key == "start_time"
