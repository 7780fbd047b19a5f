"""Blob files for the tests of this folder."""

from __future__ import annotations

import os

from nexus_node.blobs.store import BlobStore
from tests.blocking import allow_blocking


def stored_blob(store: BlobStore, data: bytes, age: float) -> str:
    """Stores ``data`` as a blob last used ``age`` seconds ago; returns its hash. (The test's
    own setup, on its loop: allowed.)"""
    with allow_blocking():
        tmp = store.new_temp()
        tmp.write_bytes(data)
        sha, _ = store.ingest(tmp)
        old = store.path(sha).stat().st_mtime - age
        os.utime(store.path(sha), (old, old))
        return sha
