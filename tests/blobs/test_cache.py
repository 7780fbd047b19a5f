"""Which cached blob copies a node over its size bound drops (pure rules)."""

from nexus_node.blobs.cache import HeldBlob, to_drop

NOW = 10_000.0


def blob(name: str, size: int, age: float, kept: bool = False, keepers_holding: int = 2) -> HeldBlob:
    return HeldBlob(name * 64, size, NOW - age, kept, keepers_holding)


def test_nothing_is_dropped_under_the_bound():
    assert to_drop([blob("a", 10, 500), blob("b", 10, 500)], 20, NOW, wanted=2) == []


def test_least_recently_used_cached_copies_go_first_until_under_the_bound():
    held = [blob("a", 40, 100), blob("b", 40, 900), blob("c", 40, 500)]
    assert to_drop(held, 80, NOW, wanted=2) == ["b" * 64]
    assert to_drop(held, 40, NOW, wanted=2) == ["b" * 64, "c" * 64]


def test_kept_recent_and_under_replicated_copies_stay_even_over_the_bound():
    held = [blob("k", 50, 900, kept=True),          # this node keeps it for the cluster
            blob("r", 50, 5),                       # used 5 s ago: a task may be about to read it
            blob("u", 50, 900, keepers_holding=1),  # one keeper of two has not fetched it yet
            blob("d", 50, 800)]
    assert to_drop(held, 0, NOW, wanted=2, min_idle=60) == ["d" * 64]


def test_a_one_node_cluster_needs_its_one_keeper():
    assert to_drop([blob("a", 10, 500, keepers_holding=1)], 0, NOW, wanted=1) == ["a" * 64]
    assert to_drop([blob("a", 10, 500, keepers_holding=0)], 0, NOW, wanted=1) == []
