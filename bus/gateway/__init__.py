"""The chart gateway's glue: sessions in Redis, market data, the aiohttp server."""
