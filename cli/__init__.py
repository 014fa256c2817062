"""`herald`: the operators' command line."""
