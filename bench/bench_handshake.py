"""Real CURVE handshakes over tcp://127.0.0.1: Ironhouse with a 10,000-certificate store.

Run: .venv/bin/python bench/bench_handshake.py [--seconds S] [--runs N] [--window W]

The same CURVE server (a ROUTER that answers one message per connection) is
measured four ways, interleaved, in one run:
  none   CURVE with no authentication at all (libzmq's default: no ZAP domain)
  bare   a do-nothing Python ZAP handler that approves everyone (the floor of
         any Python authenticator: libzmq's per-connection ZAP pipe, thread
         wake-ups, one recv and one send)
  zsec   Ironhouse: zsec.Auth + zsec.curve_server, 10,000-certificate directory
  pyzmq  Ironhouse: pyzmq's ThreadAuthenticator on the same directory
A client process keeps W connections in flight; each one is a new TCP
connection and a full CURVE handshake, then one request/reply, then close.
Prints handshakes/s (median of N runs) and each as a share of "none".
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

CLIENTS = 200


def client_process(
    endpoint: str,
    server_key: bytes,
    keys: list[tuple[bytes, bytes]],
    seconds: float,
    window: int,
    out: object,
) -> None:
    ctx = zmq.Context()
    poller = zmq.Poller()
    live: dict[zmq.Socket, float] = {}
    made = 0

    def open_one() -> None:
        nonlocal made
        public, secret = keys[made % len(keys)]
        made += 1
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_serverkey = server_key
        sock.connect(endpoint)
        sock.send(b"ping")
        poller.register(sock, zmq.POLLIN)
        live[sock] = time.perf_counter()

    def close(sock: zmq.Socket) -> None:
        poller.unregister(sock)
        del live[sock]
        sock.close(linger=0)

    for _ in range(window):
        open_one()
    done = 0
    stuck = 0
    warm_until = time.perf_counter() + 1.0
    start = end = 0.0
    while True:
        now = time.perf_counter()
        if start == 0.0 and now >= warm_until:
            start, done = now, 0
            end = start + seconds
        if start and now >= end:
            break
        for sock, _ in poller.poll(100):
            sock.recv()
            close(sock)
            done += 1
            open_one()
        # A connection refused by the server never answers: recycle it.
        for sock, opened in list(live.items()):
            if now - opened > 5.0:
                close(sock)
                stuck += 1
                open_one()
    elapsed = time.perf_counter() - start
    for sock in list(live):
        close(sock)
    ctx.term()
    out.send((done / elapsed, stuck))  # type: ignore[attr-defined]


def _bare_handler(ctx: zmq.Context) -> object:
    """Approve every ZAP request with the least possible Python; returns a stop function."""
    zap = ctx.socket(zmq.ROUTER)
    zap.linger = 0
    zap.rcvtimeo = 100
    zap.bind("inproc://zeromq.zap.01")
    stop = threading.Event()

    def run() -> None:
        recv, send = zap.recv_multipart, zap.send_multipart
        while not stop.is_set():
            try:
                f = recv()
            except zmq.Again:
                continue
            send([f[0], b"", b"1.0", f[3], b"200", b"OK", b"anyone", b""])
        zap.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(5)

    return halt


class Server:
    def __init__(self, kind: str, certs: Path) -> None:
        import zsec

        self.ctx: zmq.Context = zmq.Context()
        self.cert = zsec.Cert()
        self.stop_auth: Any = lambda: None
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        if kind == "none":
            self.cert.apply(self.sock)
            self.sock.curve_server = True
        elif kind == "bare":
            self.stop_auth = _bare_handler(self.ctx)
            zsec.curve_server(self.sock, self.cert, "global")
        elif kind == "zsec":
            auth = zsec.Auth(self.ctx)
            auth.configure_curve("global", certs)
            self.stop_auth = auth.stop
            zsec.curve_server(self.sock, self.cert, "global")
        else:
            from zmq.auth.thread import ThreadAuthenticator

            theirs = ThreadAuthenticator(self.ctx)
            theirs.start()
            theirs.configure_curve(domain="global", location=str(certs))
            self.stop_auth = theirs.stop
            self.cert.apply(self.sock)
            self.sock.curve_server = True
            self.sock.zap_domain = b"global"
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.running = True
        self.thread.start()

    def _serve(self) -> None:
        sock = self.sock
        sock.rcvtimeo = 200
        while self.running:
            try:
                identity, payload = sock.recv_multipart()
            except zmq.Again:
                continue
            sock.send_multipart([identity, payload])

    def stop(self) -> None:
        self.running = False
        self.thread.join(5)
        self.sock.close(linger=0)
        self.stop_auth()
        self.ctx.term()


def run_once(
    kind: str, certs: Path, keys: list[tuple[bytes, bytes]], seconds: float, window: int
) -> tuple[float, int]:
    server = Server(kind, certs)
    try:
        mp = multiprocessing.get_context("spawn")
        parent, child = mp.Pipe()
        proc = mp.Process(
            target=client_process,
            args=(server.endpoint, server.cert.public_key, keys, seconds, window, child),
        )
        proc.start()
        if not parent.poll(seconds + 60):
            proc.kill()
            raise RuntimeError(f"{kind}: client gave no result")
        rate, stuck = parent.recv()
        proc.join(10)
    finally:
        server.stop()
    return rate, stuck


def main() -> None:
    from _common import cert_dir

    import zsec

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--kinds", default="none,bare,zsec,pyzmq")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="zsec-bench-hs-"))
    try:
        certs = work / "curve"
        shutil.copytree(cert_dir(10_000), certs)
        (certs / ".complete").unlink()
        certs.chmod(0o700)
        keys = []
        for i in range(CLIENTS):
            cert = zsec.Cert()
            cert.save_public(certs / f"real-client-{i}.key")
            keys.append((cert.public_txt.encode(), (cert.secret_txt or "").encode()))
        kinds = args.kinds.split(",")
        print(
            f"pyzmq {zmq.pyzmq_version()}, libzmq {zmq.zmq_version()}, {os.cpu_count()} cores; "
            f"{len(list(certs.iterdir()))} certificates; window {args.window}; "
            f"{args.runs} runs x {args.seconds}s"
        )
        rates: dict[str, list[float]] = {k: [] for k in kinds}
        stuck: dict[str, int] = dict.fromkeys(kinds, 0)
        for _ in range(args.runs):
            for kind in kinds:
                rate, refused = run_once(kind, certs, keys, args.seconds, args.window)
                rates[kind].append(rate)
                stuck[kind] += refused
        med = {k: statistics.median(v) for k, v in rates.items()}
        base = med.get("none")
        for kind in kinds:
            share = f" ({med[kind] / base:.0%} of none)" if base else ""
            print(
                f"  {kind:6s} {med[kind]:8,.0f} handshakes/s{share}  runs: "
                + ", ".join(f"{r:,.0f}" for r in rates[kind])
            )
        if any(stuck.values()):
            print(f"  connections that never got an answer (should be 0): {stuck}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
