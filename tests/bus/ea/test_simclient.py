"""SimTerminal's exchange against a scripted ROUTER: strays dropped, malformed replies and
silence raised as TerminalError, the socket renewed so the next call is answered."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
import zmq

from bus.ea.simclient import SimTerminal
from protocols.ea.simwire import (
    ErrorReply,
    Reply,
    SimKind,
    SimRequest,
    decode_sim,
    encode_sim,
)
from protocols.errors import TerminalError
from tests.support import scaled

# What the scripted terminal answers to a request: a list of frame lists (none: silence).
Script = Callable[[SimRequest], list[list[bytes]]]


class ScriptedTerminal:
    """A ROUTER on a thread of its own that answers each request as ``script`` says."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.peers: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(20):
                continue
            identity, *frames = self.sock.recv_multipart()
            self.peers.add(identity)
            req = decode_sim(frames)
            assert not isinstance(req, (Reply, ErrorReply))
            for reply in self.script(req):
                self.sock.send_multipart([identity, *reply])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        self.ctx.term()


def symbols_reply(req: SimRequest, rid: int | None = None) -> list[bytes]:
    return encode_sim(Reply(req.id if rid is None else rid, SimKind.SYMBOLS, ("EURUSD",)))


@pytest.fixture
def scripted() -> Iterator[Callable[[Script], ScriptedTerminal]]:
    made: list[ScriptedTerminal] = []

    def make(script: Script) -> ScriptedTerminal:
        made.append(ScriptedTerminal(script))
        return made[-1]

    yield make
    for t in made:
        t.close()


def client(endpoint: str, timeout_s: float = 0.5) -> SimTerminal:
    return SimTerminal(endpoint, timeout_s=scaled(timeout_s))


def test_calls_before_initialize_raise() -> None:
    with pytest.raises(TerminalError, match="not initialized"):
        client("tcp://127.0.0.1:1").symbols()


def test_a_stray_reply_is_dropped_and_the_right_one_taken(scripted: Callable[
        [Script], ScriptedTerminal]) -> None:
    term = scripted(lambda req: [symbols_reply(req, rid=req.id + 1000), symbols_reply(req)]
                    if req.id > 1 else [encode_sim(Reply(req.id, SimKind.INITIALIZE, None))])
    c = client(term.endpoint)
    c.initialize()
    assert c.symbols() == ("EURUSD",) and c.strays == 1
    # A reply with the call's id but of another kind is not taken for its answer.
    with pytest.raises(TerminalError, match="a REPLY of SYMBOLS came to orders_get"):
        c.orders_get()
    c.shutdown()


def test_silence_raises_and_the_next_call_goes_on_a_new_socket(scripted: Callable[
        [Script], ScriptedTerminal]) -> None:
    answered = threading.Event()

    def script(req: SimRequest) -> list[list[bytes]]:
        if req.id == 2 and not answered.is_set():  # the first SYMBOLS: no answer
            answered.set()
            return []
        if req.id == 1:
            return [encode_sim(Reply(req.id, SimKind.INITIALIZE, None))]
        return [symbols_reply(req)]

    term = scripted(script)
    c = client(term.endpoint, timeout_s=0.2)
    c.initialize()
    with pytest.raises(TerminalError, match=r"no answer from .* within"):
        c.symbols()
    assert c.symbols() == ("EURUSD",)
    assert len(term.peers) == 2  # the second call came from a new socket
    c.shutdown()


def test_error_and_malformed_replies_raise_terminal_errors(scripted: Callable[
        [Script], ScriptedTerminal]) -> None:
    def script(req: SimRequest) -> list[list[bytes]]:
        if req.id == 1:
            return [encode_sim(Reply(req.id, SimKind.INITIALIZE, None))]
        if req.id == 2:
            return [encode_sim(ErrorReply(req.id, "unknown symbol 'X'"))]
        if req.id == 3:
            return [[b"TM\x01\x8a", b"\xc1"]]
        return [symbols_reply(req)]

    c = client(scripted(script).endpoint)
    c.initialize()
    with pytest.raises(TerminalError, match="copy_ticks_from: unknown symbol 'X'"):
        c.copy_ticks_from("X", 0, 1)
    with pytest.raises(TerminalError, match="malformed reply: body is not msgpack"):
        c.symbols()
    assert c.symbols() == ("EURUSD",)
    c.shutdown()
    with pytest.raises(TerminalError, match="not initialized"):
        c.symbols()
