"""History: the schema of ticks, bars, orders and executions, and bar bucketing (sans-I/O)."""
