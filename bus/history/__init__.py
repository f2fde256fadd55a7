"""History glue: the writer that keeps every server of a pair (and its spool) complete."""
