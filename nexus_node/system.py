"""What this machine offers (memory), read without heavy imports; and handing freed heap back
to it."""

from __future__ import annotations

import ctypes
import os


def give_back_freed_memory() -> None:
    """Return the heap freed so far to the system (glibc keeps freed chunks for reuse, so a
    process past a large step would otherwise hold that step's peak for good)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: nothing to trim
        pass


def memory_info() -> tuple[int, int]:
    """``(total, available)`` bytes of memory; the cgroup limit counts where one is set."""
    total = avail = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key == "MemTotal":
                    total = int(rest.split()[0]) * 1024
                elif key == "MemAvailable":
                    avail = int(rest.split()[0]) * 1024
    except OSError:
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        total = avail = pages * os.sysconf("SC_PAGE_SIZE") if pages else 8 << 30
    limit = _cgroup_limit()
    if limit and limit < total:
        avail = min(avail, limit - _cgroup_usage())
        total = limit
    return total, max(0, avail)


def _cgroup_limit() -> int:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = open(path).read().strip()
        except OSError:
            continue
        if raw.isdigit():
            return int(raw)
    return 0


def _cgroup_usage() -> int:
    for path in ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes"):
        try:
            return int(open(path).read().strip())
        except (OSError, ValueError):
            continue
    return 0
