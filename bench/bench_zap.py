"""ZAP throughput: zsec.Auth vs pyzmq's ThreadAuthenticator vs a bare Python echo loop.

Run: .venv/bin/python bench/bench_zap.py [--burst N] [--runs N] [--mechanisms NULL,PLAIN,CURVE]

Harness (the same for every handler): a separate process generates ZAP
requests over ipc into pyzmq's C ``zmq.proxy`` (no GIL), which forwards them to
``inproc://zeromq.zap.01`` where the handler under test is bound. The
generator sends a burst of requests (queued without limit along the way)
and then only receives; the rate is timed over the second half of the
replies, when the generator has nothing left to send, so the handler and not
the Python generator sets the pace. NULL requests, PLAIN with 1,000 users
(right passwords, from a password file), CURVE with keys from a
10,000-certificate directory. Prints requests/s (median of N runs, handlers
interleaved), the handler thread's requests per CPU-second, and the ratios.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

BURST = 120_000
USERS = 1000


def _requests(mechanism: str, keys: list[bytes]) -> list[list[bytes]]:
    base = [b"", b"1.0", b"1", b"global", b"127.0.0.1", b""]
    if mechanism == "NULL":
        return [[*base, b"NULL"]]
    if mechanism == "PLAIN":
        return [
            [*base, b"PLAIN", f"user{i}".encode(), f"password-{i}".encode()] for i in range(USERS)
        ]
    return [[*base, b"CURVE", key] for key in keys]


def generator(endpoint: str, mechanism: str, keys: list[bytes], burst: int, out: object) -> None:
    """Send ``burst`` requests, then receive the replies; report the rate of the second half."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = 10_000
    sock.sndhwm = sock.rcvhwm = 0  # no limit: the whole burst waits in the queues
    sock.connect(endpoint)
    requests = _requests(mechanism, keys)
    count = len(requests)
    send, recv = sock.send_multipart, sock.recv_multipart
    send(requests[0])
    recv()  # the path is up
    for i in range(burst):
        send(requests[i % count])
    half = burst // 2
    refused = 0
    start = 0.0
    try:
        for i in range(burst):
            reply = recv()
            if i == half:
                start = time.perf_counter()
            # A ZAP reply is [b"", version, id, status, ...]; an echo returns the request.
            if reply[3] not in (b"200", b"global"):
                refused += 1
        rate = (burst - half - 1) / (time.perf_counter() - start)
    except zmq.Again:
        rate = float("nan")  # replies were lost: report it rather than hang
    out.send((rate, refused, burst + 1))  # type: ignore[attr-defined]
    ctx.destroy(linger=0)


_STOP = b"stop-echo-loop"
_PROXIES = itertools.count()


def _echo(ctx: zmq.Context[zmq.Socket[bytes]], ready: threading.Event) -> None:
    """The bare loop: receive a ROUTER message, send it back unchanged."""
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.bind("inproc://zeromq.zap.01")
    ready.set()
    recv, send = sock.recv_multipart, sock.send_multipart
    while True:
        frames = recv()
        if frames[-1] == _STOP:
            break
        send(frames)
    sock.close()


def _stop_echo(ctx: zmq.Context[zmq.Socket[bytes]], thread: threading.Thread) -> None:
    waker = ctx.socket(zmq.DEALER)
    waker.connect("inproc://zeromq.zap.01")
    waker.send_multipart([b"", _STOP])
    thread.join(10)
    waker.close(linger=0)


class ZapProxy:
    """pyzmq's C proxy from an ipc endpoint to the context's ZAP endpoint.

    The load generator (another process) sends ZAP requests to ``endpoint``;
    ``close()`` stops the proxy and closes its sockets.
    """

    def __init__(self, ctx: zmq.Context[Any], name: str, start: bool = True) -> None:
        self.ctx = ctx
        # Never reused: an old listener's ipc file may be unlinked after a new bind.
        tag = f"{name}-{os.getpid()}-{next(_PROXIES)}"
        self.endpoint = f"ipc://{tempfile.gettempdir()}/zsec-bench-{tag}.ipc"
        self.front = ctx.socket(zmq.ROUTER)
        self.back = ctx.socket(zmq.DEALER)
        for sock in (self.front, self.back):
            sock.linger = 0
            sock.sndhwm = sock.rcvhwm = 0
        self.front.bind(self.endpoint)
        self.back.connect("inproc://zeromq.zap.01")
        self._control_address = f"inproc://proxy-control-{tag}"
        self.control = ctx.socket(zmq.PAIR)
        self.control.bind(self._control_address)
        self.thread = threading.Thread(target=self._run, daemon=True)
        if start:
            self.thread.start()

    def start(self) -> None:
        """Start forwarding (for a proxy made with ``start=False``)."""
        self.thread.start()

    def _run(self) -> None:
        control = self.ctx.socket(zmq.PAIR)
        control.connect(self._control_address)
        zmq.proxy_steerable(self.front, self.back, None, control)
        for sock in (self.front, self.back, control):
            sock.close(linger=0)

    def replies(self) -> int:
        """Message parts the proxy has passed from the handler back towards the clients."""
        self.control.send(b"STATISTICS")
        if not self.control.poll(10_000):
            raise RuntimeError("the proxy gave no statistics")
        # Eight native-endian counters; the fifth is message parts received
        # from the backend, where the handler's replies come in.
        return int.from_bytes(self.control.recv_multipart()[4], sys.byteorder)

    def close(self) -> None:
        self.control.send(b"TERMINATE")
        self.thread.join(10)
        self.control.close(linger=0)


class Handler:
    """Start one handler on a fresh context; stop() tears everything down."""

    def __init__(self, kind: str, mechanism: str, passwords: Path, certs: Path) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.kind = kind
        self.stop_fn = lambda: None
        if kind == "echo":
            ready = threading.Event()
            thread = threading.Thread(target=_echo, args=(self.ctx, ready), daemon=True)
            thread.start()
            ready.wait()
            self.stop_fn = lambda: _stop_echo(self.ctx, thread)
            self.thread_ident = thread.ident
        elif kind == "pyzmq":
            from zmq.auth import load_certificates  # noqa: F401 - same loader it uses
            from zmq.auth.thread import ThreadAuthenticator

            auth = ThreadAuthenticator(self.ctx)
            auth.start()
            # pyzmq ignores "*" for named domains, so configure the one in use.
            if mechanism == "PLAIN":
                auth.configure_plain("global", _plain_dict())
            elif mechanism == "CURVE":
                auth.configure_curve("global", str(certs))
            self.stop_fn = auth.stop
            self.thread_ident = auth.thread.ident
        else:
            import zsec

            zauth = zsec.Auth(self.ctx)
            if mechanism == "PLAIN":
                zauth.configure_plain("global", passwords)
            elif mechanism == "CURVE":
                zauth.configure_curve("global", certs)
            self.stop_fn = zauth.stop
            self.thread_ident = zauth._thread.ident
        self.zap_proxy = ZapProxy(self.ctx, kind)
        self.endpoint = self.zap_proxy.endpoint

    def stop(self) -> None:
        self.zap_proxy.close()
        self.stop_fn()
        self.ctx.term()


def _plain_dict() -> dict[str, str]:
    return {f"user{i}": f"password-{i}" for i in range(USERS)}


def run_once(
    kind: str, mechanism: str, burst: int, passwords: Path, certs: Path, keys: list[bytes]
) -> tuple[float, float, int]:
    """Return (requests/s achieved, requests per CPU-second of the handler thread, refused)."""
    return measure(Handler(kind, mechanism, passwords, certs), kind, mechanism, burst, keys)


def measure(
    handler: Any, kind: str, mechanism: str, burst: int, keys: list[bytes]
) -> tuple[float, float, int]:
    """Time one burst from a generator process against ``handler``, then stop it.

    ``handler`` has ``endpoint``, ``thread_ident`` (the answering thread)
    and ``stop()``. Returns (requests/s achieved, requests per CPU-second of
    the answering thread, refused).
    """
    try:
        clock = time.pthread_getcpuclockid(handler.thread_ident)  # type: ignore[arg-type]
        mp = multiprocessing.get_context("spawn")
        parent, child = mp.Pipe()
        proc = mp.Process(target=generator, args=(handler.endpoint, mechanism, keys, burst, child))
        cpu_before = time.clock_gettime(clock)
        proc.start()
        if not parent.poll(600):
            proc.kill()
            raise RuntimeError(f"{kind}/{mechanism}: generator gave no result")
        rate, refused, total = parent.recv()
        cpu = time.clock_gettime(clock) - cpu_before
        proc.join(10)
    finally:
        handler.stop()
    return rate, total / cpu, refused


def main() -> None:
    from _common import cert_dir

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=BURST, help="requests per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mechanisms", default="NULL,PLAIN,CURVE")
    parser.add_argument("--handlers", default="echo,pyzmq,zsec")
    args = parser.parse_args()
    certs = cert_dir(10_000)
    import zsec

    with zsec.CertStore(certs) as store:
        all_keys = [c.public_key for c in store]
    keys = random.Random(2).sample(all_keys, 1000)
    work = Path(tempfile.mkdtemp(prefix="zsec-bench-zap-"))
    passwords = work / "passwords.txt"
    passwords.write_text("".join(f"{u}={p}\n" for u, p in _plain_dict().items()))
    passwords.chmod(0o600)
    kinds = args.handlers.split(",")
    print(
        f"pyzmq {zmq.pyzmq_version()}, libzmq {zmq.zmq_version()}, {os.cpu_count()} cores; "
        f"{args.runs} runs x {args.burst:,} requests (rate timed over the second half)"
    )
    for mechanism in args.mechanisms.split(","):
        rates: dict[str, list[float]] = {k: [] for k in kinds}
        capacity: dict[str, list[float]] = {k: [] for k in kinds}
        refusals: dict[str, int] = dict.fromkeys(kinds, 0)
        for _ in range(args.runs):
            for kind in kinds:
                rate, cap, refused = run_once(kind, mechanism, args.burst, passwords, certs, keys)
                rates[kind].append(rate)
                capacity[kind].append(cap)
                refusals[kind] += refused
        for label, table in (("achieved", rates), ("per handler-CPU-second", capacity)):
            med = {k: statistics.median(v) for k, v in table.items()}
            line = ", ".join(f"{k} {med[k]:,.0f}/s" for k in kinds)
            ratios = []
            if "zsec" in med and "pyzmq" in med:
                ratios.append(f"zsec/pyzmq {med['zsec'] / med['pyzmq']:.2f}x")
            if "zsec" in med and "echo" in med:
                ratios.append(f"zsec/echo {med['zsec'] / med['echo']:.0%}")
            print(f"{mechanism:5s} {label:23s}: {line}; {'; '.join(ratios)}")
            for kind in kinds:
                runs = ", ".join(f"{v:,.0f}" for v in table[kind])
                print(f"{'':30s}{kind} runs: {runs}")
        if any(refusals.values()):
            print(f"      refused (should be 0): {refusals}")


if __name__ == "__main__":
    main()
