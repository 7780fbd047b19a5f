"""The JSON schema of the constraint answer, and a validator for the subset of JSON Schema
it uses.

Pure. The schema sent to Gemini (``responseJsonSchema``) carries the job's bounds as
``minimum``/``maximum``/``enum`` hints, but :func:`validate` checks only the *shape*
(types, required keys, no unknown keys, item counts): values out of range are not a reason
to throw the whole answer away, they are clamped into the hard bounds afterwards
(:func:`nexus_node.study.constraints.apply_override`) with a note for each clamp.
"""

from __future__ import annotations

import math
from typing import Any

from nexus_node.study.constraints import ACTIVATIONS, BATCH_CHOICES, FAMILIES, WIDTH_CHOICES, Bounds

REQUIRED = (
    "max_layers", "widths", "activations", "dropout", "learning_rate", "batch_sizes",
    "max_epochs", "families", "rationale",
)


class SchemaError(ValueError):
    """The answer does not have the schema's shape; the message names the first problem."""


def constraints_schema(bounds: Bounds) -> dict[str, Any]:
    """The response schema of a constraint answer for a job with these bounds."""
    def ints(choices: tuple[int, ...], top: int) -> dict[str, Any]:
        return {"type": "array", "minItems": 1,
                "items": {"type": "integer", "enum": [c for c in choices if c <= top] or [choices[0]]}}

    def pair(lo: float, hi: float, what: str) -> dict[str, Any]:
        return {"type": "array", "minItems": 2, "maxItems": 2, "description": f"[low, high] {what}",
                "items": {"type": "number", "minimum": lo, "maximum": hi}}

    layers = {"type": "integer", "minimum": 1, "maximum": bounds.max_layers}
    epochs = {"type": "integer", "minimum": 1, "maximum": bounds.max_epochs}
    return {
        "type": "object",
        "properties": {
            "min_layers": layers,
            "max_layers": layers,
            "widths": ints(WIDTH_CHOICES, bounds.max_width),
            "activations": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(ACTIVATIONS)}},
            "dropout": pair(0.0, 0.7, "dropout probability"),
            "learning_rate": pair(1e-5, 1.0, "Adam learning rate, sampled log-uniformly"),
            "weight_decay": pair(1e-8, 0.1, "AdamW weight decay, sampled log-uniformly"),
            "batch_sizes": ints(BATCH_CHOICES, bounds.max_batch),
            "min_epochs": epochs,
            "max_epochs": epochs,
            "families": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(FAMILIES)}},
            "rationale": {"type": "string", "maxLength": 300,
                          "description": "one sentence: why this space suits the data and the use case"},
        },
        "required": list(REQUIRED),
        "additionalProperties": False,
    }


def validate(value: Any, schema: dict[str, Any], path: str = "$") -> Any:
    """Check ``value`` against ``schema``'s shape and return it normalised.

    Supported keywords: ``type`` (object, array, string, integer, number, boolean),
    ``properties``, ``required``, ``additionalProperties: false``, ``items``,
    ``minItems``, ``maxItems``. An integral float (``3.0``) counts as an integer and comes
    back as ``int``. Other keywords (``enum``, ``minimum``, ...) are hints, not checked.

    Raises:
        SchemaError: The first mismatch, with its JSON path.
    """
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise SchemaError(f"{path} should be an object, not {_name(value)}")
        props = schema.get("properties", {})
        missing = [k for k in schema.get("required", ()) if k not in value]
        if missing:
            raise SchemaError(f"{path} lacks required {', '.join(missing)}")
        unknown = sorted(set(value) - set(props))
        if unknown and schema.get("additionalProperties") is False:
            raise SchemaError(f"{path} has unknown key(s) {', '.join(unknown)}")
        return {k: validate(v, props[k], f"{path}.{k}") if k in props else v for k, v in value.items()}
    if kind == "array":
        if not isinstance(value, list):
            raise SchemaError(f"{path} should be an array, not {_name(value)}")
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", math.inf):
            raise SchemaError(f"{path} has {len(value)} items; expected "
                              f"{schema.get('minItems', 0)}..{schema.get('maxItems', 'any')}")
        item = schema.get("items", {})
        return [validate(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _integral(value):
            raise SchemaError(f"{path} should be an integer, not {_name(value)}")
        return int(value)
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SchemaError(f"{path} should be a finite number, not {_name(value)}")
        return float(value)
    if kind == "string" and not isinstance(value, str):
        raise SchemaError(f"{path} should be a string, not {_name(value)}")
    if kind == "boolean" and not isinstance(value, bool):
        raise SchemaError(f"{path} should be true or false, not {_name(value)}")
    return value


def _integral(v: float) -> bool:
    return isinstance(v, int) or (math.isfinite(v) and float(v).is_integer())


def _name(v: Any) -> str:
    if v is None:
        return "null"
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) <= 40 else text[:39] + '…'}"
