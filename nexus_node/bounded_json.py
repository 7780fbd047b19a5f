"""JSON from outside the node, parsed within a size and a nesting limit.

``json.loads`` recurses once per nesting level, so ``[[[[...]]]]`` 100,000 deep raises
``RecursionError`` (an internal error, not the user's) and a large text costs memory on
every node the job is replicated to. :func:`loads` measures both first, with one flat scan
that never recurses, and only then parses.

Pure and stdlib only: it runs in the node process and in the CLI.
"""

from __future__ import annotations

import json
from typing import Any

from nexus_node.errors import InvalidInput


def nesting_depth(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` in ``text``, brackets inside strings excluded.

    A flat scan: it tracks strings and their backslash escapes, and never recurses, so any
    text (valid JSON or not) is measured in one pass.
    """
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif ch in "]}":
            depth = max(0, depth - 1)
    return deepest


def loads(text: str, what: str, *, max_chars: int, max_depth: int) -> Any:
    """Parse ``text`` as JSON after checking its size and nesting.

    Args:
        text: The JSON text.
        what: How messages name it ("constraints", "user_attrs_json").
        max_chars: The longest text accepted.
        max_depth: The deepest nesting of arrays and objects accepted.

    Returns:
        The parsed value.

    Raises:
        InvalidInput: too long, too deep, or not JSON; the message says which and the limit.
    """
    if len(text) > max_chars:
        raise InvalidInput(f"{what} is {len(text):,} characters long; at most {max_chars:,} are accepted")
    depth = nesting_depth(text)
    if depth > max_depth:
        raise InvalidInput(f"{what} is nested {depth} levels deep; at most {max_depth} levels are accepted")
    try:
        return json.loads(text)
    except ValueError as e:   # JSONDecodeError, and a number too long for int() (ValueError)
        raise InvalidInput(f"{what} is not valid JSON: {e}") from None
