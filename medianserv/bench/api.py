"""``bench api``: GET latency against offered rate (open loop), with ingest in the same process."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import Row, ServiceProcess, SimProcess

__all__ = ["bench_api", "load_generate"]


def load_generate(
    base_url: str,
    paths: Sequence[str],
    rps: float,
    seconds: float,
    workers: int = 16,
    headers: Sequence[str] = (),
) -> dict[str, Any]:
    """Open-loop HTTP load: ``rps`` GETs a second spread over ``workers`` keep-alive
    connections for ``seconds``, each sent at its scheduled time whatever the answers before
    it (pipelined on its connection if they are late); latency is measured from that time,
    so a slow server cannot hide its queueing (no coordinated omission). One thread, non-
    blocking sockets and a minimal response parser: the generator should cost the machine
    (two cores, shared with what it measures) as little as it can."""
    import selectors
    import socket
    from collections import deque
    from urllib.parse import urlsplit

    target = urlsplit(base_url)
    address = (target.hostname or "127.0.0.1", target.port or 80)
    extra = "".join(f"{h}\r\n" for h in headers)
    requests = [f"GET {p} HTTP/1.1\r\nHost: {address[0]}\r\n{extra}\r\n".encode() for p in paths]
    rnd = random.Random(1)
    sel = selectors.DefaultSelector()

    class Conn:
        def __init__(self) -> None:
            self.sock = socket.create_connection(address, timeout=10)
            self.sock.setblocking(False)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.waiting: deque[float] = deque()  # scheduled times of requests sent, unanswered
            self.inbox = bytearray()
            self.outbox = bytearray()
            sel.register(self.sock, selectors.EVENT_READ, self)

    conns = [Conn() for _ in range(workers)]
    latencies: list[float] = []
    errors = 0
    total = int(rps * seconds)
    start = time.perf_counter() + 0.2
    sent = 0

    def parse(conn: Conn, now: float) -> None:
        nonlocal errors
        buf = conn.inbox
        while conn.waiting:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            length = next((int(v) for name, _, v in (x.partition(b":") for x in head.split(b"\r\n"))
                           if name.strip() == b"content-length"), 0)  # fmt: skip
            if len(buf) < end + 4 + length:
                return
            status = int(head[9:12])
            del buf[: end + 4 + length]
            latencies.append(now - conn.waiting.popleft())
            if status >= 400:
                errors += 1

    while sent < total or any(c.waiting for c in conns):
        now = time.perf_counter()
        if now - start > seconds + 30:  # answers that never come count as errors
            errors += sum(len(c.waiting) for c in conns)
            break
        while sent < total and start + sent / rps <= now:
            conn = conns[sent % workers]
            conn.outbox += requests[rnd.randrange(len(requests))]
            conn.waiting.append(start + sent / rps)
            sent += 1
        for conn in conns:
            if conn.outbox:
                try:
                    n = conn.sock.send(conn.outbox)
                    del conn.outbox[:n]
                except BlockingIOError:
                    pass
        due = start + sent / rps if sent < total else now + 0.05
        for key, _ in sel.select(max(0.0, min(0.05, due - time.perf_counter()))):
            conn = key.data
            try:
                chunk = conn.sock.recv(1 << 18)
            except BlockingIOError:
                continue
            if not chunk:  # the server closed: what was waiting failed
                errors += len(conn.waiting)
                conn.waiting.clear()
                sel.unregister(conn.sock)
                conn.sock.close()
                conns[conns.index(conn)] = Conn()
                continue
            conn.inbox += chunk
            parse(conn, time.perf_counter())
    for conn in conns:
        conn.sock.close()
    sel.close()
    latencies.sort()

    def q(f: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(f * len(latencies)))] * 1000 if latencies else -1
        )

    return {"requests": len(latencies), "errors": errors, "seconds": seconds,
            "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0)}  # fmt: skip


def bench_api(
    seconds: float = 10.0,
    rates: Sequence[float] = (500, 1000, 2000, 3000, 4000, 5000, 6000),
    shared_data: Path | None = None,
) -> list[Row]:
    """Latency of GET /{symbol} at each offered rate (so the knee shows), then GET /symbols,
    while ingest runs at 10,000 trades/s in the same process: the service and the simulator in
    their own processes, the load in a third (open loop: latency counts from each request's
    scheduled time, so queueing is not hidden)."""
    import json
    import subprocess
    import tempfile

    rows: list[Row] = []
    sim = SimProcess(10_000, shared_data)
    with tempfile.TemporaryDirectory() as tmp:
        svc = ServiceProcess(sim, Path(tmp))
        try:
            svc.wait_ready(120)
            symbols = svc.get("/symbols")
            sim.control("resume")
            time.sleep(2.0)

            def applied() -> float:
                return svc.metric("trades_applied_total")[""]

            a0, t0 = applied(), time.monotonic()
            runs = [("GET /{symbol}", ["/" + s for s in symbols], rate) for rate in rates]
            runs.append(("GET /symbols", ["/symbols"], 500.0))
            for label, paths, rate in runs:
                out = subprocess.run(
                    [sys.executable, "-m", "medianserv", "bench", "load", "--url", svc.base,
                     "--rps", str(rate), "--seconds", str(seconds), "--paths", json.dumps(paths)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                r = json.loads(out.stdout)
                name = f"{label} at {rate:,.0f} req/s"
                rows += [
                    Row(f"{name}: achieved", r["requests"] / seconds, "req/s"),
                    Row(f"{name}: p50 / p99 / max latency", r["p99_ms"],
                        f"ms p99 (p50 {r['p50_ms']:.2f}, max {r['max_ms']:.0f})"),
                    Row(f"{name}: errors", r["errors"], "requests"),
                ]  # fmt: skip
            rate_in = (applied() - a0) / (time.monotonic() - t0)
            rows.append(Row("trades ingested meanwhile (offered 10,000/s)", rate_in, "trades/s"))
        finally:
            svc.stop()
            sim.stop()
    return rows
