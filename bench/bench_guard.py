"""Live revocation: what the message guard costs, and how fast a revocation cuts live sessions.

Run: .venv/bin/python bench/bench_guard.py [--messages N] [--runs N] [--connections N]

1. Receive throughput over CURVE/tcp://127.0.0.1 on one PULL socket: a sender
   process queues 2N small messages (16 bytes) into the server socket (rcvhwm 0)
   and exits; once libzmq has read them all, the server reads N with plain
   ``recv_multipart()`` and N through ``auth.guard(socket).recv_multipart()``,
   in alternating chunks of 10,000. Only the receive loops are timed. Prints ns/message for each,
   the guarded share of plain throughput (goal >= 80%) and the ns added (goal <= 1000).
2. Revocation-to-cut latency: a client process opens C CURVE connections
   (C/10 identities, 10 connections each) to a guarded ROUTER and each sends
   one message. Then certificate files are deleted one at a time; for each,
   the time from the store's change notification (the moment the store
   reflects the deletion) to each of the identity's connections being shut
   down (the ``on_cut`` callback) and to libzmq's DISCONNECTED event for it.
   Then half of the remaining identities are deleted at once. Prints p50/p99
   (goal p99 < 20 ms).
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import multiprocessing
import resource
import statistics
import struct
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path
from typing import Any

import zmq

import zsec
from zsec._monitor import subscribe as monitor_subscribe


def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# -- 1. throughput ----------------------------------------------------------------


def sender(endpoint: str, server_key: bytes, public: bytes, secret: bytes, count: int) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.sndhwm = 0
    zsec.curve_client(push, zsec.Cert.from_keys(public, secret), server_key)
    push.connect(endpoint)
    payload = b"x" * 16
    for _ in range(count):
        push.send(payload)
    push.close(linger=-1)  # returns when everything is handed to the kernel
    ctx.term()


def throughput(messages: int, runs: int) -> None:
    spawn = multiprocessing.get_context("spawn")
    ctx: zmq.Context[Any] = zmq.Context()
    auth = zsec.Auth(ctx)
    server_cert, client_cert = zsec.Cert(), zsec.Cert()
    store = zsec.CertStore()
    store.insert(client_cert)
    auth.configure_curve("*", store)
    pull = ctx.socket(zmq.PULL)
    pull.rcvhwm = 0
    pull.linger = 0
    zsec.curve_server(pull, server_cert)
    guarded = auth.guard(pull)
    pull.bind("tcp://127.0.0.1:*")
    endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT)
    fds: list[int] = []
    monitor_subscribe(pull, lambda e, v: fds.append(v) if e == zmq.EVENT_ACCEPTED else None)
    plain_ns, guard_ns = [], []
    chunk = 10_000
    for run in range(runs):
        assert client_cert.secret_key is not None
        proc = spawn.Process(
            target=sender,
            args=(
                endpoint,
                server_cert.public_key,
                client_cert.public_key,
                client_cert.secret_key,
                2 * messages,
            ),
        )
        proc.start()
        proc.join()
        _drained(fds[-1])
        # Both loops read the same connection, in alternating chunks, so any
        # drift on this shared machine falls on both alike.
        spent = {"plain": 0.0, "guard": 0.0}
        order = ("plain", "guard") if run % 2 == 0 else ("guard", "plain")
        for _ in range(messages // chunk):
            for which in order:
                recv = pull.recv_multipart if which == "plain" else guarded.recv_multipart
                start = time.perf_counter()
                for _ in range(chunk):
                    recv()
                spent[which] += time.perf_counter() - start
        count = messages // chunk * chunk
        plain_ns.append(spent["plain"] / count * 1e9)
        guard_ns.append(spent["guard"] / count * 1e9)
    plain, guard = statistics.median(plain_ns), statistics.median(guard_ns)
    print(f"receive, {messages} x 16 B over CURVE, median of {runs} runs:")
    print(f"  plain recv_multipart    {plain:7.0f} ns/msg   runs: {_list(plain_ns)}")
    print(f"  guarded recv_multipart  {guard:7.0f} ns/msg   runs: {_list(guard_ns)}")
    print(
        f"  guarded/plain throughput {plain / guard:.2f} (goal >= 0.80); "
        f"added {guard - plain:+.0f} ns/msg (goal <= 1000)"
    )
    guarded.close(0)
    auth.stop()
    ctx.destroy(linger=0)


def _drained(fd: int) -> None:
    """Wait until libzmq has read (and decrypted) everything the kernel holds for ``fd``."""
    quiet = 0
    while quiet < 5:
        time.sleep(0.02)
        try:
            waiting = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            waiting = 0
        quiet = quiet + 1 if waiting == 0 else 0
    time.sleep(0.2)  # the I/O thread's last batch


def _list(values: list[float]) -> str:
    return " ".join(f"{v:.0f}" for v in values)


# -- 2. revocation-to-cut latency -------------------------------------------------------


def clients(
    endpoint: str, server_key: bytes, keys: list[tuple[bytes, bytes]], per: int, ready: Any
) -> None:
    raise_fd_limit(65536)
    ctx: zmq.Context[Any] = zmq.Context()
    ctx.max_sockets = len(keys) * per + 100
    socks = []
    for public, secret in keys:
        cert = zsec.Cert.from_keys(public, secret)
        for _ in range(per):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            zsec.curve_client(sock, cert, server_key)
            sock.connect(endpoint)
            sock.send(b"hello")
            socks.append(sock)
    ready.send("connected")
    ready.recv()  # until the parent is done
    for sock in socks:
        sock.close(linger=0)
    ctx.term()


def latency(connections: int) -> None:
    raise_fd_limit(65536)
    per = 10
    identities = connections // per
    spawn = multiprocessing.get_context("spawn")
    ctx: zmq.Context[Any] = zmq.Context()
    ctx.max_sockets = 100
    auth = zsec.Auth(ctx)
    with tempfile.TemporaryDirectory() as tmp:
        trusted = Path(tmp) / "trusted"
        trusted.mkdir(mode=0o700)
        certs = [zsec.Cert() for _ in range(identities)]
        for i, cert in enumerate(certs):
            cert.save_public(trusted / f"c{i}.key")
        store = zsec.CertStore(str(trusted))
        changed: list[float] = []
        # Subscribed before the guard: told first, so this is when the store changed.
        store.subscribe(lambda change: changed.append(time.perf_counter()))
        auth.configure_curve("*", store)
        server_cert = zsec.Cert()
        router = ctx.socket(zmq.ROUTER)
        router.linger = 0
        router.rcvhwm = 0
        zsec.curve_server(router, server_cert)
        cut_at: dict[str, list[float]] = {}
        lock = threading.Lock()

        def on_cut(cut: zsec.Cut) -> None:
            now = time.perf_counter()
            with lock:
                cut_at.setdefault(cut.identity, []).append(now)
                cut_fds.append(now)

        cut_fds: list[float] = []
        disconnected: list[float] = []
        monitor_subscribe(
            router,
            lambda e, v: (
                disconnected.append(time.perf_counter()) if e == zmq.EVENT_DISCONNECTED else None
            ),
        )
        guarded = auth.guard(router, on_cut=on_cut)
        router.bind("tcp://127.0.0.1:*")
        endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        parent_end, child_end = spawn.Pipe()
        keys = [(c.public_key, c.secret_key) for c in certs]
        proc = spawn.Process(
            target=clients, args=(endpoint, server_cert.public_key, keys, per, child_end)
        )
        proc.start()
        assert parent_end.recv() == "connected"
        start = time.monotonic()
        for _ in range(connections):
            guarded.recv_multipart()
        print(
            f"\n{connections} connections ({identities} identities x {per}) established "
            f"and heard from in {time.monotonic() - start:.1f}s"
        )
        to_cut, to_disc = [], []
        singles = min(30, identities // 2)
        for i in range(singles):
            changed.clear()
            before = len(disconnected)
            (trusted / f"c{i}.key").unlink()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                with lock:
                    done = len(cut_at.get(certs[i].public_txt, [])) >= per
                if done and len(disconnected) >= before + per:
                    break
                time.sleep(0.0005)
            t0 = changed[0]
            to_cut += [(t - t0) * 1000 for t in cut_at.get(certs[i].public_txt, [])]
            to_disc += [(t - t0) * 1000 for t in disconnected[before:]]
        _report(f"one identity ({per} connections) at a time, {singles} times", to_cut, to_disc)
        # Then many at once.
        bulk = list(range(singles, singles + (identities - singles) // 2))
        changed.clear()
        cut_fds.clear()
        before = len(disconnected)
        for i in bulk:
            (trusted / f"c{i}.key").unlink()
        want = len(bulk) * per
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            len(cut_fds) < want or len(disconnected) < before + want
        ):
            time.sleep(0.001)
        t0 = changed[0]
        _report(
            f"{len(bulk)} identities ({want} connections) deleted at once",
            [(t - t0) * 1000 for t in cut_fds],
            [(t - t0) * 1000 for t in disconnected[before:]],
        )
        parent_end.send("done")
        proc.join(10)
        guarded.close(0)
        auth.stop()
        store.close()
    ctx.destroy(linger=0)


def _report(what: str, to_cut: list[float], to_disc: list[float]) -> None:
    print(f"{what}: ms from the store's change")
    for name, values in (("shut down (on_cut)", to_cut), ("DISCONNECTED event", to_disc)):
        if not values:
            print(f"  {name}: none")
            continue
        values = sorted(values)
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        print(
            f"  {name:20s} n={len(values):4d} p50 {statistics.median(values):6.2f}  "
            f"p99 {p99:6.2f}  max {values[-1]:6.2f}   (goal p99 < 20)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--skip", choices=("throughput", "latency"), default=None)
    args = parser.parse_args()
    logging.getLogger("zsec").setLevel(logging.ERROR)  # one warning per cut otherwise
    print(f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, Python {sys.version.split()[0]}")
    if args.skip != "throughput":
        throughput(args.messages, args.runs)
    if args.skip != "latency":
        latency(args.connections)


if __name__ == "__main__":
    main()
