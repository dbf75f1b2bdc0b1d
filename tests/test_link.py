"""Link: our own socket driven by websockets' sans-I/O protocol, against real servers."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, SERVER
from websockets.sync.server import ServerConnection, serve
from websockets.uri import parse_uri

from medianserv.link import Link
from medianserv.sim import SimConfig, Simulator

from .support import wait_for


def read_until(link: Link, predicate: object, timeout: float = 10.0) -> list[dict[str, object]]:
    """Messages read until one satisfies ``predicate``, decoded."""
    out: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out += [json.loads(p) for p in link.read(0.1)]
        if any(predicate(m) for m in out):  # type: ignore[operator]
            return out
    raise AssertionError(f"not received within {timeout} s: {out[-3:]}")


def test_subscribe_read_and_close() -> None:
    with Simulator(SimConfig(symbols=10, trades_per_second=2000, seed=3)) as sim:
        symbol = next(iter(sim.market.trading))
        link = Link.open(sim.ws_url + "/stream")
        link.send_text(json.dumps({"method": "SUBSCRIBE", "params": [symbol.lower() + "@trade"],
                                   "id": 1}))  # fmt: skip
        messages = read_until(link, lambda m: m.get("stream") == symbol.lower() + "@trade")
        assert {"result": None, "id": 1} in messages
        link.send_text('{"method":"LIST_SUBSCRIPTIONS","id":2}')
        listed = read_until(link, lambda m: m.get("id") == 2)
        assert {"result": [symbol.lower() + "@trade"], "id": 2} in listed
        link.close()
        wait_for(lambda: sim.stats()["connections_open"] == 0)
        with pytest.raises(ConnectionClosed):
            link.send_text("{}")


def test_a_read_waits_as_long_as_it_is_told() -> None:
    """Each read waits for the timeout it is given, whatever the socket's timeout was set to
    before (the handshake's, a send's close timeout, the read before): a read skips setting it
    only when it is the same already."""
    with Simulator(SimConfig(symbols=4, trades_per_second=0, seed=5)) as sim:
        link = Link.open(sim.ws_url + "/stream", close_timeout=2)
        for timeout in (0.0, 0.05, 0.05, None, 0.0):
            if timeout is None:  # a blocking read would wait for a message: one is asked for
                link.send_text('{"method":"LIST_SUBSCRIPTIONS","id":7}')
            link.read(timeout)
            assert link.sock.gettimeout() == timeout
            if timeout is not None:  # the same again: the one set is kept
                link.read(timeout)
                assert link.sock.gettimeout() == timeout
            link.send_text('{"method":"LIST_SUBSCRIPTIONS","id":8}')  # a send: close timeout
            assert link.sock.gettimeout() == 2
        link.close()


def test_pings_are_answered_at_once_under_a_flood() -> None:
    """Pings every 0.5 s, a pong due within 1 s, while the server writes as fast as we read:
    the pong goes out with the chunk that brought the ping, never behind its frames."""
    config = SimConfig(symbols=20, flood=True, ping_interval=0.5, pong_timeout=1.0)
    with Simulator(config) as sim:
        link = Link.open(sim.ws_url + "/stream")
        streams = [s.lower() + "@trade" for s in sim.listed()]
        link.send_text(json.dumps({"method": "SUBSCRIBE", "params": streams, "id": 1}))
        frames = 0
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            frames += len(link.read(0.1))
        assert frames > 10_000
        stats = sim.stats()
        assert stats["violations"] == {} and stats["connections_open"] == 1
        assert 0 < stats["pong_latency_by_agent"]["medianserv"] < 1.0
        link.close()


def test_messages_before_a_close_are_delivered_then_it_raises() -> None:
    with Simulator(SimConfig(symbols=10, trades_per_second=0)) as sim:
        link = Link.open(sim.ws_url + "/stream")
        link.send_text('{"method":"LIST_SUBSCRIPTIONS","id":7}')
        time.sleep(0.3)  # the reply is on its way before the close
        sim.expire()
        got: list[object] = []
        with pytest.raises(ConnectionClosedOK) as err:
            while True:
                got += [json.loads(p) for p in link.read(1.0)]
        assert got == [{"result": [], "id": 7}]
        assert err.value.rcvd is not None and err.value.rcvd.code == 1000


def test_a_refused_handshake_raises() -> None:
    with Simulator(SimConfig(symbols=10, trades_per_second=0)) as sim:
        sim.refuse_connections(30)
        with pytest.raises(InvalidStatus) as err:
            Link.open(sim.ws_url + "/stream")
        assert err.value.response.status_code == 503


def test_fragmented_messages_are_joined_and_controls_skipped() -> None:
    ours, theirs = socket.socketpair()
    link = Link(ours, ClientProtocol(parse_uri("ws://x/stream"), state=OPEN))
    wire = b"".join(
        f.serialize(mask=False)
        for f in (
            Frame(Opcode.TEXT, b'{"a":', fin=False),
            Frame(Opcode.PING, b"p"),  # a control frame may come between fragments
            Frame(Opcode.CONT, b"1}", fin=True),
            Frame(Opcode.TEXT, b'{"b":2}'),
        )
    )
    theirs.sendall(wire)
    assert link.read(1.0) == [b'{"a":1}', b'{"b":2}']
    pong = theirs.recv(100)  # answered at once, masked as a client must
    assert pong[0] == 0x8A and pong[1] & 0x80
    ours.close()
    theirs.close()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls(tmp_path: Path) -> None:
    """wss:// over the standard ssl module, the certificate checked against the host name."""
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    def echo(conn: ServerConnection) -> None:
        for message in conn:
            conn.send(message)

    with serve(echo, "localhost", 0, ssl=server_ctx) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        client_ctx = ssl.create_default_context(cafile=str(cert))
        link = Link.open(f"wss://localhost:{port}/", ssl_context=client_ctx)
        payload = json.dumps({"x": "y" * 70_000})  # bigger than one TLS record
        link.send_text(payload)
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            got += [bytes(p) for p in link.read(0.5)]
        assert got == [payload.encode()]
        link.close()
        with pytest.raises(ssl.SSLCertVerificationError):  # a certificate we do not trust
            Link.open(f"wss://localhost:{port}/")
        server.shutdown()


# -- the fast framing path against websockets' own parser ----------------------------------------

frames = st.one_of(
    st.builds(lambda d: Frame(Opcode.TEXT, d), st.binary(max_size=300)),
    st.builds(lambda d: Frame(Opcode.BINARY, d), st.binary(max_size=70_000)),
    st.builds(lambda d: Frame(Opcode.PING, d), st.binary(max_size=20)),
    st.builds(lambda d: Frame(Opcode.PONG, d), st.binary(max_size=20)),
    st.builds(  # a message in fragments
        lambda parts: (
            [Frame(Opcode.TEXT, parts[0], fin=False)]
            + [Frame(Opcode.CONT, p, fin=False) for p in parts[1:-1]]
            + [Frame(Opcode.CONT, parts[-1], fin=True)]
        ),
        st.lists(st.binary(max_size=50), min_size=2, max_size=4),
    ),
    st.builds(lambda d: [b"\xc1" + bytes([len(d)]) + d], st.binary(max_size=10)),  # RSV1 set
    st.just(Frame(Opcode.CLOSE, b"\x03\xe8bye")),
)


def wire_of(items: list[Any], masked_at: int | None) -> bytes:
    out = []
    for k, item in enumerate(items):
        for f in item if isinstance(item, list) else [item]:
            # raw bytes as they are; a masked server frame is an error
            out.append(f if isinstance(f, bytes) else f.serialize(mask=k == masked_at))
    return b"".join(out)


def reference(wire: bytes, max_size: int) -> tuple[list[bytes], bytes]:
    """What websockets' protocol alone makes of ``wire``: messages, and bytes it sends."""
    p = ClientProtocol(parse_uri("ws://x/stream"), state=OPEN, max_size=max_size)
    p.receive_data(wire)
    link = Link.__new__(Link)
    link._parts = []
    messages = [bytes(m) for m in link._messages(p.events_received())]
    return messages, b"".join(p.data_to_send())


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(frames, max_size=12),
    st.lists(st.integers(1, 400), max_size=30),
    st.none() | st.integers(0, 11),
    st.sampled_from([2**20, 1000]),
)
def test_fast_framing_equals_the_protocol(
    items: list[Any], cuts: list[int], masked_at: int | None, max_size: int
) -> None:
    """Whatever the frames and however the bytes are cut into chunks, the Link yields the same
    messages and sends the same bytes (pongs, close) as websockets' own parser."""
    wire = wire_of(items, masked_at)
    expected, expected_sent = reference(wire, max_size)
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    link = Link(ours, ClientProtocol(parse_uri("ws://x/stream"), state=OPEN, max_size=max_size))
    link.max_size = max_size
    got: list[bytes] = []
    pos = 0
    for cut in [*cuts, len(wire)]:
        if link.protocol.state is not OPEN:
            break
        chunk = wire[pos : pos + cut]
        pos += cut
        got += [bytes(m) for m in link.feed(chunk)]
        if pos >= len(wire):
            break
    if link.protocol.state is OPEN and pos < len(wire):
        got += [bytes(m) for m in link.feed(wire[pos:])]
    ours.shutdown(socket.SHUT_WR)
    sent = b""
    while chunk := theirs.recv(1 << 16):
        sent += chunk
    ours.close()
    theirs.close()
    assert got == expected

    def unmasked(data: bytes) -> list[tuple[int, bytes]]:  # our frames are masked at random
        p = ClientProtocol(parse_uri("ws://x/stream"), state=OPEN)
        p.side = SERVER  # read them as the server would
        p.receive_data(data)
        return [(f.opcode, bytes(f.data)) for f in p.events_received() if isinstance(f, Frame)]

    assert unmasked(sent) == unmasked(expected_sent)
