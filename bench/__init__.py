"""`make bench`: Herald's throughput against the naive Temporal design and the machine's ceiling."""
