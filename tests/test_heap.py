"""glibc's heap given back after a large free (`activities.heap.trim`, called by the
validation once it has read the file): without it asyncpg's freed buffers stay in the worker
and a 1,000,000-row validation's peak goes over issue 23's 300 MB."""

import os

from activities import heap

PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def test_trim_gives_freed_heap_pages_back_to_the_system() -> None:
    # The worker's image and the development machines use glibc: trimming must work there.
    assert heap.trimmable()
    # Blocks below glibc's mmap threshold come from the heap; every other one is freed, so
    # the freed ones are in its middle, between kept ones, where free() leaves them be. Not
    # zeros: `bytes(n)` is calloc's, which leaves pages fresh from the system untouched (not
    # resident), and whether they are fresh depends on what the process freed before.
    blocks = [b"\x01" * 100_000 for _ in range(400)]
    heap.trim()
    del blocks[::2]
    freed = resident_bytes()

    assert heap.trim()

    assert freed - resident_bytes() > 15_000_000
    assert len(blocks) == 200
