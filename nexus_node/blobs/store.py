"""Content-addressed blob store: uploaded CSVs, prepared arrays, model artifacts.

A blob lives at ``<root>/<sha[:2]>/<sha>``. Writes go to a temporary file in the same
directory and are renamed into place after the hash is known, so a crash never leaves a
half-written file under a valid name, and storing the same bytes twice is a no-op.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

CHUNK = 1 << 20


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def new_temp(self, suffix: str = "") -> Path:
        """A fresh path under the store's tmp dir (same filesystem, so ingest is a rename)."""
        fd, name = tempfile.mkstemp(dir=self.tmp, suffix=suffix)
        os.close(fd)
        return Path(name)

    def new_temp_dir(self, prefix: str = "") -> Path:
        return Path(tempfile.mkdtemp(dir=self.tmp, prefix=prefix))

    def ingest(self, src: Path) -> tuple[str, int]:
        """Move ``src`` into the store under its hash. Returns ``(sha256, size)``."""
        h = hashlib.sha256()
        size = 0
        with open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
        digest = h.hexdigest()
        dest = self.path(digest)
        if dest.is_file():
            src.unlink()
            # In use again: the blob collector (blobs/gc.py) leaves a recently used file alone,
            # so these bytes, stored again for a new job, are not removed for an old one's sake.
            os.utime(dest)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
        return digest, size

    def read_chunks(self, sha256: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        with open(self.path(sha256), "rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def blob_files(self) -> list[Path]:
        """Every blob file in the store."""
        return [p for d in self.root.iterdir() if d.is_dir() and len(d.name) == 2 and d != self.tmp
                for p in d.iterdir() if p.is_file() and len(p.name) == 64]

    def remove_if_unused(self, sha256: str, since: float) -> bool:
        """Removes blob ``sha256`` unless it was used (its mtime refreshed) at or after ``since``;
        whether it is gone (blocking)."""
        path = self.path(sha256)
        try:
            if path.stat().st_mtime >= since:
                return False
            path.unlink()
        except FileNotFoundError:
            pass
        return True

    def usage(self) -> tuple[int, int]:
        """``(blobs, bytes)`` in the store now (blocking: it stats every file)."""
        count = size = 0
        for path in self.blob_files():
            try:
                size += path.stat().st_size
            except FileNotFoundError:   # dropped meanwhile (blobs/cache.py)
                continue
            count += 1
        return count, size

    def clear_temp(self) -> None:
        """Drop leftovers of uploads interrupted by a crash."""
        for p in self.tmp.iterdir():
            if p.is_file():
                p.unlink()
            else:
                shutil.rmtree(p, ignore_errors=True)

