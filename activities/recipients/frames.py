"""polars, its allocator told to give memory back soon: import `pl` from here.

polars allocates through its own jemalloc, which by default keeps an arena per thread and
freed pages for ten seconds: in a long-lived worker a validation's working set would stay on
top of what sending needs. One arena and a short decay lower validation's peak at the same
speed (docs/RECIPIENTS.md, "Speed and memory"). jemalloc reads the setting when polars
loads, so it is set before the import, unless the environment already sets it.
"""

import os

os.environ.setdefault("_RJEM_MALLOC_CONF", "narenas:1,dirty_decay_ms:100,muzzy_decay_ms:0")

import polars as pl

__all__ = ["pl"]
