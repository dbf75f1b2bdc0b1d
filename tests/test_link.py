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

import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN
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
