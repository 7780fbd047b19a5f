"""The search-space constraint schema, the heuristic engine, and the rules that keep any
engine's answer (heuristic, user, later the LLM) inside what the cluster can run.

Pure: no I/O, no heavy imports; it runs in the node process.

Every engine produces a :class:`Constraints`. Values from outside (a user's JSON, an LLM's
answer) go through :func:`apply_override`, which lets them move freely inside, but never
past, the bounds computed for the data and the smallest worker's memory (:func:`hard_bounds`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from nexus_node import bounded_json
from nexus_node.errors import InvalidInput

ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "leaky_relu")
# "mlp": the PyTorch network; "gbt": scikit-learn HistGradientBoosting. Both search in
# one study by default: which wins depends on the table, and the sampler learns which.
FAMILIES = ("mlp", "gbt")
WIDTH_CHOICES = (8, 16, 32, 64, 128, 256, 512, 1024)
BATCH_CHOICES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# Regression target scales and class weightings the search may choose between (both
# families); see nexus_node.pipeline.target and the families' ``class_weight``.
TARGET_TRANSFORMS = ("none", "log")
CLASS_WEIGHTS = ("none", "balanced")
# How a categorical column with more values than one-hot keeps is encoded (both families):
# one-hot of its most frequent values plus its count, or an out-of-fold target encoding
# (nexus_node.pipeline.target_encoding); offered when the table has such a column.
CATEGORY_ENCODINGS = ("onehot", "target")
# A class table this lopsided (largest class count over smallest) searches balanced class
# weights too.
IMBALANCE_RATIO = 1.5
# A positive regression target at least this skewed searches a log scale too: below it a log
# rarely changes which rows dominate squared error, and an extra choice costs trials.
OFFER_LOG_SKEW = 0.75


@dataclass(frozen=True)
class Constraints:
    """Bounds of the search space. Ranges are inclusive ``(low, high)`` pairs. The layer,
    width, activation, dropout, weight-decay, batch and epoch bounds shape the MLP;
    ``learning_rate`` is the MLP's (trees use their own range, see
    :mod:`nexus_node.study.space`); ``families`` lists the model families searched.
    ``target_transforms`` (regression: ``"none"``, ``"log"``) and ``class_weights``
    (classification: ``"none"``, ``"balanced"``) are the choices searched for the target's
    scale and the loss's class weights, ``category_encodings`` (``"onehot"``,
    ``"target"``) those for high-cardinality categorical columns; empty means the choice
    does not apply (the other task, no such column, or a job from before the choice
    existed) and configurations carry none."""

    min_layers: int = 1
    max_layers: int = 3
    widths: tuple[int, ...] = (32, 64, 128, 256)
    activations: tuple[str, ...] = ("relu", "gelu", "silu")
    dropout: tuple[float, float] = (0.0, 0.3)
    learning_rate: tuple[float, float] = (3e-4, 3e-2)
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    batch_sizes: tuple[int, ...] = (64, 128, 256)
    min_epochs: int = 10
    max_epochs: int = 100
    families: tuple[str, ...] = FAMILIES
    target_transforms: tuple[str, ...] = ()
    class_weights: tuple[str, ...] = ()
    category_encodings: tuple[str, ...] = ()
    rationale: str = ""
    source: str = "heuristic"
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Constraints":
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in d:
                v = d[f.name]
                kwargs[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**kwargs)


@dataclass(frozen=True)
class Bounds:
    """The widest space the data and the smallest worker allow."""

    max_layers: int
    max_width: int
    max_batch: int
    max_epochs: int


def hard_bounds(n_rows: int, n_features: int, memory_bytes: int) -> Bounds:
    """Bounds from the data size and the smallest worker's free memory.

    The estimate is deliberately coarse: parameters, Adam state and gradients (4 copies of
    the weights) plus activations of one batch, at 4 bytes each, with 4x headroom for the
    framework. A trial whose space fits this never needs more than a quarter of a worker.
    """
    n_features = max(1, n_features)
    budget = max(64 << 20, memory_bytes // 4)
    max_width = WIDTH_CHOICES[0]
    for w in WIDTH_CHOICES:
        params = n_features * w + 8 * w * w
        if 4 * 4 * params * 4 <= budget:
            max_width = w
    # A batch larger than the training split is only wasted padding.
    train_rows = max(16, int(n_rows * 0.64))
    max_batch = max(b for b in BATCH_CHOICES if b <= max(16, train_rows)) if train_rows >= 16 else 16
    while max_batch > 16 and max_batch * max_width * 8 * 4 * 4 > budget:
        max_batch //= 2
    return Bounds(max_layers=8, max_width=max_width, max_batch=max_batch, max_epochs=500)


def heuristic_constraints(profile: Mapping[str, Any], memory_bytes: int) -> Constraints:
    """Deterministic constraints from the dataset profile alone.

    Small tables get fewer, narrower layers and more epochs (each epoch is cheap, and early
    stopping ends them); large tables get wider layers, bigger batches and fewer epochs.
    """
    rows = int(profile.get("rows", 0))
    n_features = int(profile.get("n_features", 0)) or len(profile.get("columns", []))
    b = hard_bounds(rows, n_features, memory_bytes)
    if rows < 5_000:
        c = Constraints(
            max_layers=3, widths=(32, 64, 128, 256), batch_sizes=(32, 64, 128),
            min_epochs=20, max_epochs=150, learning_rate=(5e-4, 3e-2),
            rationale=f"{rows} rows: small network, small batches, early stopping on validation",
        )
    elif rows < 100_000:
        c = Constraints(
            max_layers=4, widths=(64, 128, 256, 512), batch_sizes=(128, 256, 512),
            min_epochs=10, max_epochs=60,
            rationale=f"{rows} rows: medium network and batches",
        )
    else:
        c = Constraints(
            max_layers=4, widths=(64, 128, 256, 512), batch_sizes=(512, 1024, 2048),
            min_epochs=5, max_epochs=25,
            rationale=f"{rows} rows: large batches and few epochs keep trials short",
        )
    return clamp(_with_target_choices(c, profile), b)


def _with_target_choices(c: Constraints, profile: Mapping[str, Any]) -> Constraints:
    """``c`` with ``target_transforms`` / ``class_weights`` from the target's profile: a log scale is
    offered for a positive, right-skewed regression target, balanced class weights for an
    imbalanced class table; validation then decides between them and the plain choice.
    A table with high-cardinality categorical columns (prepare lists them) searches their
    encoding too."""
    if profile.get("high_cardinality"):
        c = dataclasses.replace(c, category_encodings=CATEGORY_ENCODINGS)
    task = profile.get("task")
    stats = (profile.get("target_column") or {}).get("stats") or {}
    if task == "regression":
        skew = stats.get("skew")
        if skew is None and stats.get("std"):
            # Pearson's median skewness, for a profile that lacks the moment one.
            skew = 3.0 * (float(stats["mean"]) - float(stats["median"])) / float(stats["std"])
        positive = stats.get("min") is not None and float(stats["min"]) > 0
        offer = positive and skew is not None and float(skew) >= OFFER_LOG_SKEW
        return dataclasses.replace(
            c, target_transforms=TARGET_TRANSFORMS if offer else ("none",)
        )
    if task in ("binary", "multiclass"):
        counts = [int(n) for n in (stats.get("class_counts") or {}).values() if int(n) > 0]
        lopsided = len(counts) > 1 and max(counts) >= IMBALANCE_RATIO * min(counts)
        return dataclasses.replace(c, class_weights=CLASS_WEIGHTS if lopsided else ("none",))
    return c


def clamp(c: Constraints, b: Bounds) -> Constraints:
    """Force every value into the absolute and data/memory bounds, recording what changed."""
    notes = list(c.notes)

    def note(msg: str) -> None:
        notes.append(msg)

    max_layers = min(max(1, int(c.max_layers)), b.max_layers)
    min_layers = min(max(1, int(c.min_layers)), max_layers)
    if (min_layers, max_layers) != (c.min_layers, c.max_layers):
        note(f"layers clamped to {min_layers}..{max_layers}")
    widths = tuple(sorted({w for w in c.widths if w in WIDTH_CHOICES and w <= b.max_width}))
    if not widths:
        widths = (min(b.max_width, 64),)
    if widths != tuple(c.widths):
        note(f"widths clamped to {list(widths)}")
    acts = tuple(a for a in dict.fromkeys(c.activations) if a in ACTIVATIONS) or ("relu",)
    if acts != tuple(c.activations):
        note(f"activations limited to {list(acts)}")
    dropout = _clamp_range(c.dropout, 0.0, 0.7, "dropout", note)
    lr = _clamp_range(c.learning_rate, 1e-5, 1.0, "learning_rate", note)
    wd = _clamp_range(c.weight_decay, 1e-8, 0.1, "weight_decay", note)
    batches = tuple(sorted({x for x in c.batch_sizes if x in BATCH_CHOICES and x <= b.max_batch}))
    if not batches:
        batches = (b.max_batch,)
    if batches != tuple(c.batch_sizes):
        note(f"batch sizes clamped to {list(batches)}")
    max_epochs = min(max(1, int(c.max_epochs)), b.max_epochs)
    min_epochs = min(max(1, int(c.min_epochs)), max_epochs)
    if (min_epochs, max_epochs) != (c.min_epochs, c.max_epochs):
        note(f"epochs clamped to {min_epochs}..{max_epochs}")
    families = tuple(f for f in dict.fromkeys(c.families) if f in FAMILIES) or ("mlp",)
    transforms = tuple(t for t in dict.fromkeys(c.target_transforms) if t in TARGET_TRANSFORMS)
    if transforms != tuple(c.target_transforms):
        note(f"target transforms limited to {list(transforms)}")
    weights = tuple(w for w in dict.fromkeys(c.class_weights) if w in CLASS_WEIGHTS)
    if weights != tuple(c.class_weights):
        note(f"class weights limited to {list(weights)}")
    encodings = tuple(e for e in dict.fromkeys(c.category_encodings) if e in CATEGORY_ENCODINGS)
    if encodings != tuple(c.category_encodings):
        note(f"category encodings limited to {list(encodings)}")
    return dataclasses.replace(
        c, min_layers=min_layers, max_layers=max_layers, widths=widths, activations=acts,
        dropout=dropout, learning_rate=lr, weight_decay=wd, batch_sizes=batches,
        min_epochs=min_epochs, max_epochs=max_epochs, families=families,
        target_transforms=transforms, class_weights=weights, category_encodings=encodings,
        rationale=str(c.rationale)[:500], notes=tuple(dict.fromkeys(notes)),
    )


def _clamp_range(
    r: Any, lo: float, hi: float, name: str, note: Callable[[str], None]
) -> tuple[float, float]:
    a, b_ = float(r[0]), float(r[1])
    if not (math.isfinite(a) and math.isfinite(b_)):
        note(f"{name} was not finite; reset to {lo}..{hi}")
        return (lo, hi)
    a2, b2 = min(max(a, lo), hi), min(max(b_, lo), hi)
    if a2 > b2:
        a2, b2 = b2, a2
    if (a2, b2) != (a, b_):
        note(f"{name} clamped to {a2:g}..{b2:g}")
    return (a2, b2)


_KEYS = {f.name for f in dataclasses.fields(Constraints)} - {"source", "notes"}
#: Constraints JSON is one object of lists and numbers (depth 2); a little slack lets a
#: mistake such as ``[["relu"]]`` reach the typed checks and their clearer message.
MAX_DEPTH = 8
MAX_CHARS = 64 << 10
_RANGES = {   # key -> (lowest low, whether the low may be it, high must be below, how to say so)
    "dropout": (0.0, True, 1.0, "from 0 and below 1"),
    "learning_rate": (0.0, False, math.inf, "above 0"),
    "weight_decay": (0.0, True, math.inf, "from 0"),
}
_CHOICES: dict[str, tuple[Any, ...]] = {
    "widths": WIDTH_CHOICES, "batch_sizes": BATCH_CHOICES, "activations": ACTIVATIONS,
    "families": FAMILIES, "target_transforms": TARGET_TRANSFORMS, "class_weights": CLASS_WEIGHTS,
    "category_encodings": CATEGORY_ENCODINGS,
}
_INTS = ("min_layers", "max_layers", "min_epochs", "max_epochs")
MAX_INT = 1_000_000   # past any bound clamp() allows; larger is a typo
MAX_RATIONALE = 2_000


def parse_override(text: str) -> dict[str, Any]:
    """Parse and type-check a user's constraints JSON.

    Every key must be known and every value of its type: the layer and epoch counts
    integers from 1, the ranges ``[low, high]`` pairs of finite numbers with ``low <= high``
    (dropout below 1, a learning rate above 0, a weight decay from 0), the lists non-empty
    lists of their known choices (:data:`WIDTH_CHOICES`, :data:`ACTIVATIONS`, ...), a
    minimum not above its maximum. What passes here can still be clamped by
    :func:`apply_override` (to the data's and the workers' bounds), never fail.

    Raises:
        InvalidInput: the first problem, and what would be accepted.
    """
    d = bounded_json.loads(text, "constraints_json", max_chars=MAX_CHARS, max_depth=MAX_DEPTH)
    if not isinstance(d, dict):
        raise InvalidInput("constraints must be a JSON object, e.g. {\"max_layers\": 2}")
    unknown = sorted(set(d) - _KEYS)
    if unknown:
        raise InvalidInput(f"unknown constraint keys {unknown}; allowed: {sorted(_KEYS)}")
    for k, v in d.items():
        if k in _RANGES:
            _check_range(k, v, *_RANGES[k])
        elif k in _CHOICES:
            _check_choices(k, v, _CHOICES[k])
        elif k in _INTS:
            if not _is_int(v) or not 1 <= v <= MAX_INT:
                raise InvalidInput(f"constraint {k!r} must be a positive integer (1 to {MAX_INT:,}), "
                                   f"not {_shown(v)}")
        elif k == "rationale" and not (isinstance(v, str) and len(v) <= MAX_RATIONALE):
            raise InvalidInput(f"constraint 'rationale' must be a string of at most {MAX_RATIONALE} characters")
    for lo, hi in (("min_layers", "max_layers"), ("min_epochs", "max_epochs")):
        if lo in d and hi in d and d[lo] > d[hi]:
            raise InvalidInput(f"constraint {lo!r} ({d[lo]}) is above {hi!r} ({d[hi]})")
    return d


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    # A JSON integer may be too large for a float (10**400): math.isfinite would raise.
    if _is_int(v):
        return bool(abs(v) < 2**1023)
    return isinstance(v, float) and math.isfinite(v)


def _shown(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (list, dict, str, bool, type(None))) else repr(v)
    return text if len(text) <= 40 else text[:39] + "…"


def _check_range(k: str, v: Any, lowest: float, closed: bool, below: float, where: str) -> None:
    if not (isinstance(v, list) and len(v) == 2 and all(_is_number(x) for x in v)):
        raise InvalidInput(f"constraint {k!r} must be a [low, high] pair of finite numbers, not {_shown(v)}")
    low, high = float(v[0]), float(v[1])
    if low > high:
        raise InvalidInput(f"constraint {k!r}: low ({v[0]}) is above high ({v[1]})")
    if low < lowest or (low == lowest and not closed) or high >= below:
        raise InvalidInput(f"constraint {k!r} must lie {where}, not {_shown(v)}")


def _check_choices(k: str, v: Any, choices: tuple[Any, ...]) -> None:
    kind = "integers" if isinstance(choices[0], int) else "strings"
    if not (isinstance(v, list) and v):
        raise InvalidInput(f"constraint {k!r} must be a non-empty list of {kind} from {list(choices)}, "
                           f"not {_shown(v)}")
    for x in v:
        typed = _is_int(x) if kind == "integers" else isinstance(x, str)
        if not typed or x not in choices:
            raise InvalidInput(f"constraint {k!r} must be a list of {kind} from {list(choices)}; "
                               f"{_shown(x)} is not one of them")


def apply_override(base: Constraints, override: Mapping[str, Any], bounds: Bounds, source: str) -> Constraints:
    """Apply a user's (or an LLM's) values over ``base``, then clamp into ``bounds``.

    The heuristic's values are defaults, not limits: an override may move inside the hard
    bounds freely (fewer epochs than the heuristic's minimum, say), but never past what the
    data and the smallest worker allow. Where a pair ends up inverted (a new maximum below
    the old minimum) the minimum follows the maximum.
    """
    kw: dict[str, Any] = {}
    for key, value in override.items():
        if key in ("source", "notes"):
            continue
        kw[key] = tuple(value) if isinstance(value, list) else value
    merged = dataclasses.replace(base, **kw, source=source)
    if "max_layers" in override and "min_layers" not in override:
        merged = dataclasses.replace(merged, min_layers=min(merged.min_layers, merged.max_layers))
    if "max_epochs" in override and "min_epochs" not in override:
        merged = dataclasses.replace(merged, min_epochs=min(merged.min_epochs, merged.max_epochs))
    return clamp(merged, bounds)
