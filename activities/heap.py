"""glibc's heap given back to the system after a large free: `trim`.

glibc's malloc keeps freed memory in its heaps for the process to reuse, and gives back only
the top of a heap. Once a large block has been freed it also raises its mmap threshold to
that block's size, so later blocks of that size come from the heaps too. Reading a batch's
file frees asyncpg's buffers, about the file's size, once its bytes are made: kept, they
stayed in the worker under the blocks validated next and raised its peak by as much.
`malloc_trim` gives the free pages of every heap back, in a few ms. Only after that read:
after every block's COPY it saved a little more but cost CPU (the pages it gives back are
faulted in again by the next block), as a fixed mmap threshold (`mallopt`) would
(docs/RECIPIENTS.md, "Speed and memory").

Where the C library has no `malloc_trim` (musl, macOS), `trim` does nothing.
"""

import ctypes
import ctypes.util
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    function = getattr(libc, "malloc_trim", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_MALLOC_TRIM = _malloc_trim()


def trimmable() -> bool:
    """Whether `trim` gives memory back here (glibc), rather than doing nothing."""
    return _MALLOC_TRIM is not None


def trim() -> bool:
    """Give the free pages of glibc's heaps back to the system; whether any were."""
    return _MALLOC_TRIM is not None and bool(_MALLOC_TRIM(0))
