"""The chart gateway's sans-I/O core: credentials, limits, the client protocol."""
