"""History rows of an order store write: one ORDERS row per record version, one EXECUTIONS row
per log entry it appended (the historian's conversion, in one place: the rebuild reads these
columns back)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from protocols.errors import RemoteProtocolError
from protocols.history.schema import Columns
from protocols.orders.codec import from_blob
from protocols.orders.messages import ExecutionReport
from protocols.orders.record import Order

__all__ = ["append_write", "decode_write"]


def decode_write(position: int, record_blob: bytes, entry_blobs: Sequence[bytes]
                 ) -> tuple[Order, tuple[ExecutionReport, ...]]:
    """The record and the log entries of history stream entry ``position``; raises
    RemoteProtocolError when a blob is not what the stream promises."""
    record = from_blob(record_blob)
    if not isinstance(record, Order):
        raise RemoteProtocolError(f"history entry {position}: not an order record "
                                  f"({type(record).__name__})")
    reports: list[ExecutionReport] = []
    for blob in entry_blobs:
        msg = from_blob(blob)
        if not isinstance(msg, ExecutionReport) or msg.order_id != record.order_id:
            raise RemoteProtocolError(f"history entry {position}: a log entry of another "
                                      f"order or kind ({type(msg).__name__})")
        reports.append(msg)
    return record, tuple(reports)


def append_write(orders: Columns, executions: Columns, position: int, record_blob: bytes,
                 entry_blobs: Sequence[bytes],
                 quote: Callable[[str], tuple[float, float]] = lambda _: (0.0, 0.0)) -> int:
    """Append the rows of history stream entry ``position`` (the record as stored and the log
    entries its write appended); ``quote(symbol)`` is the (bid, ask) of the order's symbol as
    the historian last saw it ((0, 0): none). Returns the rows appended; raises
    RemoteProtocolError (nothing appended) when a blob is not what the stream promises."""
    record, reports = decode_write(position, record_blob, entry_blobs)
    o = record.order
    bid, ask = quote(o.symbol)
    orders.append((
        record.order_id, record.updated_ns, position, o.account, o.client_order_id, o.symbol,
        int(o.side), int(o.type), record.quantity,
        record.price if record.price is not None else 0.0, int(record.state),
        record.filled_quantity, record.avg_price, record.exec_seq, record.epoch, o.sent_ns,
        bid, ask, record_blob))
    for r, blob in zip(reports, entry_blobs, strict=True):
        executions.append((
            r.order_id, r.seq, position, r.exec_id, r.account, r.symbol, int(r.side),
            int(r.state), r.last_quantity, r.last_price, r.filled_quantity, r.avg_price,
            r.transact_ns, r.epoch, blob))
    return 1 + len(reports)
