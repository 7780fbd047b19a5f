import hashlib

from nexus_node.blobs.store import BlobStore


def test_blob_is_content_addressed_and_idempotent(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    for _ in range(2):
        t = store.new_temp()
        t.write_bytes(b"hello")
        sha, size = store.ingest(t)
        assert not t.exists()
    assert sha == hashlib.sha256(b"hello").hexdigest() and size == 5
    assert store.path(sha).read_bytes() == b"hello"
    assert b"".join(store.read_chunks(sha, 2)) == b"hello"


def test_usage_counts_stored_blobs_and_not_uploads_in_progress(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    assert store.usage() == (0, 0)
    for data in (b"hello", b"abc", b"hello"):
        t = store.new_temp()
        t.write_bytes(data)
        store.ingest(t)
    store.new_temp(".part").write_bytes(b"half an upload")
    assert store.usage() == (2, 8)
