"""polars, its allocator told to give memory back soon: import `pl` from here.

polars allocates through its own jemalloc, which by default keeps an arena per thread and
freed pages for ten seconds. In a long-lived worker a validation's working set then stayed
on top of what sending needs: the worker that validated a 1,000,000-row file peaked at
416 MB, against 142 MB for the other. One arena and a 100 ms decay brought validation's
peak from about +260 MB to +185 MB at the same speed (`make bench-validation`). jemalloc
reads the setting when polars loads, so it is set before the import, unless the
environment already sets it.
"""

import os

os.environ.setdefault("_RJEM_MALLOC_CONF", "narenas:1,dirty_decay_ms:100,muzzy_decay_ms:0")

import polars as pl

__all__ = ["pl"]
