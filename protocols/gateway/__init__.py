"""The chart gateway (docs/GATEWAY.md)."""
