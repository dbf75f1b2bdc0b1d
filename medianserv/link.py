"""One WebSocket connection over a socket we own, driven by websockets' sans-I/O protocol.

Theory of operation
-------------------
websockets' :class:`~websockets.client.ClientProtocol` decides everything (the handshake,
framing, answering pings, the closing handshake) and does no I/O; :class:`Link` only moves
bytes, as websockets' own ``sync/connection.py`` does in its ``recv_events`` loop, but in the
reader's thread and a whole chunk at a time:

* :meth:`Link.read` waits for the socket, reads everything there is into one large buffer
  (``recv_into``, up to 128 KiB), frames it, sends at once what the protocol wants sent (the
  pong to Binance's ping goes out before any frame of the chunk is handled), and returns the
  payloads of every complete message of the chunk.

Framing has one fast path. :meth:`Link.feed` finds frame boundaries itself (two header
bytes) and hands the protocol whole frames only. Binance's trade frames are all alike:
complete (FIN), unmasked, text, no extension, under ``max_size``. While the connection is
open and no fragmented message is in progress, such a frame changes nothing in the
protocol's state, so it is cut out of the chunk directly, instead of running the protocol's
general frame parser (about 0.4 us a frame instead of 3 us). Every other frame (pings,
pongs, close, fragments, anything malformed), and everything once the connection is no
longer open, goes to the protocol whole and in order: it keeps deciding what every control
frame means and answers it. A property test checks the result equals the protocol's own,
byte for byte, however a stream of frames is cut into chunks.
* :meth:`Link.send_text` frames a message and sends it.
* :meth:`Link.close` runs the closing handshake (a close frame, then the server's EOF, at most
  ``close_timeout`` seconds) and closes the socket.

No background thread, no queue, no hand-off per frame: a frame costs the protocol's parsing
(about 2.6 us) and nothing else. Back-pressure is TCP's own: what we have not read stays in
the kernel's buffers, and Binance sees a slow consumer as it would see any other.

TLS (``wss://``) is the standard :mod:`ssl` module over the same socket.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidMessage
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import CLOSED, CONNECTING, OPEN, Event
from websockets.uri import parse_uri

__all__ = ["Consumer", "Handler", "Link", "Payload"]

#: Bytes read from the socket at once: many frames per call.
READ_SIZE = 1 << 17

Connector = Callable[[tuple[str, int], float], socket.socket]
Payload = bytes | bytearray | memoryview  # a message as the protocol hands it over
Handler = Callable[[list[Payload]], None]  # takes the payloads of a chunk, in order


class Consumer(Protocol):
    """What :meth:`Link.feed` takes as a trade path (:class:`~medianserv.hotpath.TradePath`)."""

    def consume(self, data: bytes, pos: int) -> int: ...


def frame_header(data: bytes, i: int) -> tuple[int, int, int] | None:
    """The header of the server frame starting at ``data[i]``: (first byte, where its payload
    starts, the payload's length), or None while the header is incomplete. A masked frame
    (which a server must not send) comes back with its length byte as it is, over 127,
    unparsed. O(1)."""
    end = len(data)
    if end - i < 2:
        return None
    head, size = data[i], data[i + 1]
    if size < 126:
        return head, i + 2, size
    if size == 126:
        return (head, i + 4, data[i + 2] << 8 | data[i + 3]) if end - i >= 4 else None
    if size == 127:
        return (
            (head, i + 10, int.from_bytes(data[i + 2 : i + 10], "big")) if end - i >= 10 else None
        )
    return head, i + 2, size


def _deliver(out: list[Payload], handle: Handler | None) -> list[Payload]:
    if handle is None:
        return out
    if out:
        handle(out)
    return []


def _connect_tcp(address: tuple[str, int], timeout: float) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # control messages are small
    return sock


class Link:
    """A WebSocket client connection; owned and used by one thread.

    Runtime complexity: :meth:`read` O(bytes read); :meth:`send_text` O(len(message)).
    """

    def __init__(self, sock: socket.socket, protocol: ClientProtocol, close_timeout: float = 2.0):
        """Use :meth:`open`."""
        self.sock = sock
        self.protocol = protocol
        self.close_timeout = close_timeout
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self.last_read = 0  # bytes the last read took from the socket
        self._parts: list[Payload] = []  # fragments of an unfinished message
        self._early: list[Payload] = []  # messages that came with the handshake response
        self._rest = b""  # the start of a frame not complete yet (the fast path's, see read)
        self.max_size = 2**20

    @classmethod
    def open(
        cls,
        url: str,
        *,
        timeout: float = 10.0,
        max_size: int = 2**20,
        close_timeout: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
        connector: Connector = _connect_tcp,
        user_agent: str = "medianserv",
    ) -> Link:
        """Connect to ``url`` (``ws://`` or ``wss://``) and complete the opening handshake
        within ``timeout`` seconds. Raises OSError, TimeoutError or InvalidHandshake."""
        uri = parse_uri(url)
        deadline = time.monotonic() + timeout
        sock = connector((uri.host, uri.port), timeout)
        try:
            if uri.secure:
                context = ssl_context or ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=uri.host)
            protocol = ClientProtocol(uri, max_size=max_size)
            link = cls(sock, protocol, close_timeout)
            link.max_size = max_size
            request = protocol.connect()
            request.headers["User-Agent"] = user_agent
            protocol.send_request(request)
            link._flush()
            while protocol.state is CONNECTING:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("timed out during the opening handshake")
                sock.settimeout(remaining)
                n = sock.recv_into(link._buffer)
                if n:
                    protocol.receive_data(link._buffer[:n])
                else:
                    protocol.receive_eof()
                link._flush()
                events = protocol.events_received()
                if protocol.handshake_exc is not None:
                    raise protocol.handshake_exc
                if protocol.state is CONNECTING and not n:
                    raise InvalidMessage("connection closed during the opening handshake")
                # frames that arrived with the response are kept for the first read
                link._early = link._messages(e for e in events if not isinstance(e, Response))
            if protocol.state is not OPEN:
                raise InvalidHandshake("the opening handshake did not complete")
        except BaseException:
            sock.close()
            raise
        return link

    # -- bytes in, messages out -------------------------------------------------------------------

    def read(
        self, timeout: float | None, handle: Handler | None = None, path: Consumer | None = None
    ) -> list[Payload]:
        """The payloads of the messages that arrived within ``timeout`` seconds (0: only what
        is there already), oldest first; ``[]`` when nothing did. With ``handle`` they go to
        it instead, and with ``path`` the trade frames it takes are applied between them (see
        :meth:`feed`). Raises ConnectionClosed once the connection has ended (after every
        message it delivered was returned)."""
        if self._early:
            early, self._early = self._early, []
            return _deliver(early, handle)
        protocol = self.protocol
        if protocol.state is not OPEN:  # closed by the server, or failed: after its messages
            self._finish()
        sock = self.sock
        try:
            if sock.gettimeout() != timeout:  # (a system call a read saved: usually the same)
                sock.settimeout(timeout)
            n = sock.recv_into(self._buffer)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            return []
        if not n:
            if self._rest:
                protocol.receive_data(self._rest)
                self._rest = b""
            protocol.receive_eof()
            self._flush()
            return _deliver(self._messages(protocol.events_received()), handle)
        self.last_read = n
        return self.feed(self._view[:n], handle, path)

    def feed(
        self,
        chunk: bytes | bytearray | memoryview,
        handle: Handler | None = None,
        path: Consumer | None = None,
    ) -> list[Payload]:
        """Frame ``chunk`` (the next bytes from the server): the payloads of the messages it
        completes, in order. Control frames go to the protocol, which answers them at once.

        With ``handle``, each payload goes to it as soon as it is framed (and ``[]`` comes
        back); with ``path`` too (a :class:`~medianserv.hotpath.TradePath`), the path takes
        the trade frames it can apply straight from the bytes wherever a frame starts and no
        fragmented message is in progress, and every frame it leaves goes the way it would
        without it, whole and in order: payloads to ``handle`` before the path goes on.
        O(len(chunk))."""
        assert path is None or handle is not None, "a path needs a handler for what it leaves"
        protocol = self.protocol
        data = self._rest + chunk if self._rest else bytes(chunk)
        out: list[Payload] = []
        i, end, max_size = 0, len(data), self.max_size
        handoff = False  # the rest of the chunk goes to the protocol
        # Whole frames only, fast path or not: the protocol never holds half a frame, so the
        # next frame boundary is always ours to find.
        while protocol.state is OPEN:
            if path is not None and protocol.current_size is None:
                if out:
                    assert handle is not None
                    handle(out)  # in order: before the path applies the frames after them
                    out = []
                i = path.consume(data, i)
            header = frame_header(data, i)
            if header is None:
                break
            head, start, size = header
            if data[i + 1] > 127 or size > max_size:  # masked by a server, or too big: the
                handoff = True  # protocol refuses it (and closes) from its header alone
                break
            stop = start + size
            if stop > end:
                break  # incomplete: wait for the rest
            if (head == 0x81 or head == 0x82) and protocol.current_size is None:
                out.append(data[start:stop])  # FIN, no RSV bit, text or binary, no fragment
            else:  # a control frame, a fragment, or something malformed: the protocol decides
                protocol.receive_data(data[i:stop])
                self._flush()
                out += self._messages(protocol.events_received())
            i = stop
        if not handoff and protocol.state is OPEN:
            self._rest = data[i:]  # the start of a frame not complete yet: wait for its end
        else:
            self._rest = b""
            if i < end:  # the protocol parses the rest, in order
                protocol.receive_data(data[i:])
                self._flush()
                out += self._messages(protocol.events_received())
        return _deliver(out, handle)

    def _messages(self, events: Iterable[Event]) -> list[Payload]:
        """Text and binary payloads among ``events``, fragmented messages joined."""
        out: list[Payload] = []
        for event in events:
            if not isinstance(event, Frame):
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
                if event.fin and not self._parts:
                    out.append(event.data)
                else:
                    self._parts.append(event.data)
                    if event.fin:
                        out.append(b"".join(self._parts))
                        self._parts = []
        return out

    def _flush(self) -> None:
        """Send whatever the protocol wants sent (pongs, close frames, our messages)."""
        for data in self.protocol.data_to_send():
            if data:
                self.sock.settimeout(self.close_timeout)
                self.sock.sendall(data)
            else:  # the protocol asks to half-close
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_WR)

    def _finish(self) -> None:
        """The connection is ending: wait for the server's EOF (briefly), close the socket,
        raise the protocol's ConnectionClosed."""
        deadline = time.monotonic() + self.close_timeout
        protocol = self.protocol
        try:
            while protocol.state is not CLOSED and time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                n = self.sock.recv_into(self._buffer)
                if n:
                    protocol.receive_data(self._buffer[:n])
                else:
                    protocol.receive_eof()
                self._flush()
                protocol.events_received()
        except OSError:
            pass
        if protocol.state is not CLOSED:
            protocol.receive_eof()
        self.sock.close()
        raise protocol.close_exc

    # -- messages out ----------------------------------------------------------------------------

    def send_text(self, message: str | bytes) -> None:
        """Send one text message. Raises ConnectionClosed when the connection has ended."""
        protocol = self.protocol
        if protocol.state is not OPEN:
            if protocol.state is CLOSED:
                raise protocol.close_exc
            self._finish()
        data = message.encode() if isinstance(message, str) else message
        protocol.send_text(data)
        self._flush()

    def close(self) -> None:
        """Run the closing handshake (at most ``close_timeout`` seconds) and close the socket.
        Never raises: whatever went wrong, the socket is closed."""
        try:
            if self.protocol.state is OPEN:
                self.protocol.send_close(1000)
                self._flush()
            self._finish()
        except Exception:  # closing must not fail: the socket is closed below anyway
            pass
        finally:
            self.sock.close()
