"""JSON from outside, measured before it is parsed."""

from __future__ import annotations

import pytest

from nexus_node.bounded_json import loads, nesting_depth
from nexus_node.errors import InvalidInput


@pytest.mark.parametrize("text, depth", [
    ("", 0), ("1", 0), ("{}", 1), ('{"a": [1, {"b": []}]}', 4),
    ('{"a": "[[[[{{{"}', 1),            # brackets inside a string do not count
    ('["\\"[[["]', 1),                   # nor after an escaped quote
    ('["\\\\", [[]]]', 3),               # an escaped backslash ends before the quote
    ("]]]][[", 2),                       # not JSON: measured all the same
    ("[" * 200_000, 200_000),           # flat: no recursion however deep
])
def test_nesting_depth(text, depth):
    assert nesting_depth(text) == depth


def test_loads_refuses_deep_long_and_broken_text_with_the_limit():
    with pytest.raises(InvalidInput, match="nested 5 levels deep; at most 4"):
        loads("[[[[[]]]]]", "x", max_chars=100, max_depth=4)
    with pytest.raises(InvalidInput, match="101 characters long; at most 100"):
        loads(" " * 101, "x", max_chars=100, max_depth=4)
    with pytest.raises(InvalidInput, match="x is not valid JSON"):
        loads("{nope", "x", max_chars=100, max_depth=4)
    assert loads('{"a": [[1]]}', "x", max_chars=100, max_depth=3) == {"a": [[1]]}
