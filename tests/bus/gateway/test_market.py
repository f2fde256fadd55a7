"""The gateway's market data against a real feed, recovery service, Redis and historian: a
gateway started mid-stream builds exactly the history's bars (the seam), and keeps them live."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bus.gateway.market import MarketData
from bus.history.readers import open_history_reader
from bus.ticks.subscriber import SubscriberOptions
from nodes.servers.redis_server import RedisProcess
from protocols.history.bars import bars_from_columns
from protocols.history.schema import END_OF_TIME
from tests.nodes.harness import run_feed, run_recovery
from tests.nodes.history.test_historian import history_config, running
from tests.support import scaled, wait_until

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]


def test_a_gateway_started_mid_stream_has_the_history_bars_and_keeps_them_live(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    path = tmp_path / "h.duckdb"
    cfg = history_config(redis_server, path, rate=2000.0)
    symbol = cfg.feeds[0].symbols[0]

    async def main() -> None:
        async with run_recovery(cfg), running(cfg, path) as historian, run_feed(cfg):
            await wait_until(lambda: historian.stats.ticks >= 3_000, scaled(20), "history")
            readers = open_history_reader(cfg)
            await readers.open()
            market = MarketData(SubscriberOptions.from_config(cfg, udp_bind="",
                                                              snapshot=False),
                                cfg.feeds[0].symbols, readers.reader, 7,
                                retention_count=1000, retention_s=60.0)
            try:
                await market.start()
                await asyncio.wait_for(market.wait_ready(symbol), scaled(15))
                trail = market.trails[symbol, 1]
                first_live = len(trail.closed_bars())
                await wait_until(lambda: len(trail.closed_bars()) >= first_live + 3,
                                 scaled(15), "three live one-second bars")
                await wait_until(lambda: historian.stats.bars > 0, scaled(5), "bars")
                # Bars the gateway closed itself, from live ticks (the first one spans the
                # seam: history's ticks up to the first live one, then live ones).
                mine = {b.start_ns: b for b in trail.closed_bars()[first_live:]}
                # The history closes the same bars a moment later: compare what both have.
                await asyncio.sleep(0.5)
                stored = {b.start_ns: b for b in bars_from_columns(
                    await readers.reader.bars(symbol, 1, 0, END_OF_TIME))}
                common = sorted(set(mine) & set(stored))
                assert len(common) >= 3
                for start in common:
                    assert mine[start] == stored[start], start
                assert market.stats.seam_gap == 0 and market.stats.seam_dropped == 0
                forming = market.forming(symbol, 60)
                assert forming is not None and forming.last_seq >= max(
                    b.last_seq for b in mine.values())
            finally:
                await market.close()
                await readers.close()

    asyncio.run(main())
