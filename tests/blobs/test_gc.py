"""Which blob files a node removes for good (pure): garbage, once unused for the grace period."""

from nexus_node.blobs.gc import StoredBlob, sweep

NOW = 10_000.0


def stored(name: str, age: float, size: int = 10) -> StoredBlob:
    return StoredBlob(name * 64, size, NOW - age)


def test_garbage_past_its_grace_goes_oldest_first_and_live_blobs_stay_however_old():
    files = [stored("a", 400), stored("b", 900), stored("c", 10_000), stored("d", 350)]
    result = sweep(files, live={"c" * 64}, now=NOW, grace=300)
    assert result.remove == ["b" * 64, "a" * 64, "d" * 64]
    assert result.next_due is None


def test_garbage_younger_than_the_grace_waits_and_says_when_it_falls_due():
    # A just-stored upload whose job is not recorded yet looks like garbage: the grace keeps it.
    files = [stored("u", 20), stored("v", 100), stored("w", 301)]
    result = sweep(files, live=set(), now=NOW, grace=300)
    assert result.remove == ["w" * 64]
    assert result.next_due == NOW - 100 + 300   # v, the older of the two waiting


def test_a_grace_of_zero_removes_all_garbage_at_once():
    assert sweep([stored("a", 0)], live=set(), now=NOW, grace=0).remove == ["a" * 64]
    assert sweep([], live=set(), now=NOW, grace=0).remove == []
