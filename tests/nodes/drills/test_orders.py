"""nodes.drills.orders.BusyTap: every BUSY a real OrderClient decodes is counted and timed, the
replies reach the client unchanged, and the client module is left as it was."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import zmq
import zmq.asyncio

import bus.orders.client
from bus.orders.client import OrderClient, OrderClientOptions
from nodes.drills.orders import BusyTap
from nodes.drills.ports import bind_loopback
from protocols.errors import OrderRejected
from protocols.orders.codec import decode_order, encode_order
from protocols.orders.lifecycle import OrderState
from protocols.orders.messages import (
    NewOrder,
    OrderAck,
    OrderReject,
    OrderType,
    RejectReason,
    Side,
)

pytestmark = pytest.mark.timeout(30)


def decoder() -> object:
    """What the client module calls to decode a reply now."""
    return vars(bus.orders.client)["decode_order"]


async def busy_then_ack(sock: zmq.asyncio.Socket, busy: int, sent: list[str]) -> None:
    """A backend's client ROUTER that answers each order's first ``busy`` attempts with BUSY
    (a 1 ms hint), then acks it; ``sent`` gets the client order id of each BUSY."""
    seen: dict[str, int] = {}
    while True:
        ident, *frames = await sock.recv_multipart()
        req = decode_order(frames)
        assert isinstance(req, NewOrder)
        cid = req.client_order_id
        seen[cid] = seen.get(cid, 0) + 1
        reply: OrderAck | OrderReject
        if seen[cid] <= busy:
            reply = OrderReject(cid, RejectReason.BUSY, "at the admission bound", 1)
            sent.append(cid)
        else:
            reply = OrderAck(cid, f"o-{cid}", OrderState.ACCEPTED, 1)
        await sock.send_multipart([ident, *encode_order(reply)])


def order(cid: str) -> NewOrder:
    return NewOrder("acct", cid, "EURUSD", Side.BUY, OrderType.MARKET, 1.0, None,
                    time.time_ns())


def test_the_tap_counts_and_times_every_busy_reply_the_client_decodes() -> None:
    real = decoder()
    busy_sent: list[str] = []

    async def scenario() -> None:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.ROUTER)
        endpoint = bind_loopback(sock)
        server = asyncio.create_task(busy_then_ack(sock, 2, busy_sent))
        try:
            with BusyTap() as tap:
                assert decoder() is not real
                async with OrderClient(OrderClientOptions((endpoint,), deadline_s=10)) as c:
                    t0 = time.perf_counter_ns()
                    for cid in ("c-1", "c-2"):
                        # BUSY, BUSY, then the ack; a client may also give a BUSY up to its
                        # caller: the tap counts what was decoded either way
                        try:
                            ack = await c.place(order(cid))
                        except OrderRejected as exc:
                            assert exc.reason is RejectReason.BUSY
                        else:
                            assert ack == OrderAck(cid, f"o-{cid}", OrderState.ACCEPTED, 1)
            assert decoder() is real
            assert tap.busy == len(busy_sent) >= 2 and tap.decoded >= tap.busy
            assert set(tap.first_busy_ns) == {"c-1", "c-2"}
            assert t0 <= tap.first_busy_ns["c-1"] <= tap.first_busy_ns["c-2"]
        finally:
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server
            sock.close(linger=0)
            ctx.term()

    asyncio.run(scenario())


def test_the_tap_puts_the_decoder_back_after_an_error() -> None:
    real = decoder()
    with pytest.raises(RuntimeError), BusyTap():
        raise RuntimeError("the benchmark failed")
    assert decoder() is real
