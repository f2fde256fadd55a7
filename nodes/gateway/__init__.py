"""The chart gateway node and its command-line tools."""
