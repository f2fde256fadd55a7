"""A stream's bar builder as the store holds it: what a restarted historian continues from,
and how a reader with no live process rebuilds the forming bar.

:func:`resumed_builder` reads, for each resolution, its last closed bar and the closed bars of
the next finer resolution after it, then the ticks after the last closed 1 s bar (from a minute
before it, so a late tick is found), and hands them to :meth:`BarBuilder.resume`
(protocols/history/bars.py). ``upto`` cuts at a sequence number: a restarted historian resumes
after its tick watermark, and a bar or tick above it is not known yet as far as the ticks still
to come are concerned (they will close that bar again).
"""

from __future__ import annotations

from itertools import pairwise

from bus.store.history_reader import HistoryReader
from protocols.history.bars import RES_SECONDS, Bar, BarBuilder, bars_from_columns
from protocols.history.schema import END_OF_TIME, NS_PER_S

__all__ = ["LATE_NS", "TICKS_LIMIT", "resumed_builder"]

LATE_NS = 60 * NS_PER_S  # a tick up to a minute late is found among the forming bar's ticks
TICKS_LIMIT = 1_000_000  # ticks read at most to rebuild one forming 1 s bar


async def resumed_builder(store: HistoryReader, stream: str, *, top_res_s: int = RES_SECONDS[-1],
                          end_ns: int = END_OF_TIME, upto: int | None = None) -> BarBuilder:
    """The builder of ``stream`` with every forming bar up to ``top_res_s`` rebuilt from the
    store (bars starting before ``end_ns``; ticks and bars up to sequence ``upto``)."""
    limit = END_OF_TIME if upto is None else upto
    # Above ``upto`` a LIVE server may hold a batch more than the resume point (the writer
    # resumes from the lower server): read back far enough to find the last bar below it.
    back = 1 if upto is None else 64
    levels = RES_SECONDS[:RES_SECONDS.index(top_res_s) + 1]
    known: list[Bar] = []
    last: dict[int, Bar | None] = {}
    for res in levels:
        rows = await store.bars(stream, res, 0, end_ns, countback=back)
        got = [b for b in bars_from_columns(rows) if b.last_seq <= limit]
        last[res] = got[-1] if got else None
        known.extend(got[-1:])
    for finer, res in pairwise(levels):
        done = last[res]
        after = done.start_ns + res * NS_PER_S if done else 0
        known.extend(b for b in bars_from_columns(await store.bars(stream, finer, after, end_ns))
                     if b.last_seq <= limit and (done is None or b.last_seq > done.last_seq))
    builder = BarBuilder.resume(stream, known)
    fine = last[RES_SECONDS[0]]
    since = max(0, fine.start_ns - LATE_NS) if fine else 0
    ticks = await store.ticks(stream, since, end_ns, TICKS_LIMIT)
    c = ticks.data
    for i in range(len(ticks)):
        if c["seq"][i] <= limit:
            builder.on_tick(c["seq"][i], c["ts_ns"][i], c["bid"][i], c["ask"][i], c["last"][i],
                            c["volume"][i])
    return builder
