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
        removed_at: dict[str, float] = {}  # Z85 key -> when the store reflected its removal

        def store_changed(change: Any) -> None:
            now = time.perf_counter()
            for cert in change.removed:
                removed_at.setdefault(cert.public_txt, now)

        # Subscribed before the guard, so told first: the moment the store changed.
        store.subscribe(store_changed)
        auth.configure_curve("*", store)
        server_cert = zsec.Cert()
        router = ctx.socket(zmq.ROUTER)
        router.linger = 0
        router.rcvhwm = 0
        zsec.curve_server(router, server_cert)
        cuts: list[tuple[zsec.Cut, float]] = []
        ports: dict[int, int] = {}  # fd -> peer port, from ACCEPTED
        gone: dict[int, float] = {}  # peer port -> DISCONNECTED time

        def heard(event: int, fd: int) -> None:
            if event == zmq.EVENT_ACCEPTED:
                ends = zsec._guard.endpoints(fd)
                if ends is not None:
                    ports[fd] = zsec._guard.ip_port(ends[1])[1]
            elif event == zmq.EVENT_DISCONNECTED and fd in ports:
                gone.setdefault(ports.pop(fd), time.perf_counter())

        monitor_subscribe(router, heard)

        def on_cut(cut: zsec.Cut) -> None:
            cuts.append((cut, time.perf_counter()))

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
        singles = min(30, identities // 2)
        batches = [[i] for i in range(singles)]
        batches.append(list(range(singles, singles + (identities - singles) // 2)))
        for n, batch in enumerate(batches):
            keys = {certs[i].public_txt for i in batch}
            for i in batch:
                (trusted / f"c{i}.key").unlink()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                mine = [(c, t) for c, t in cuts if c.identity in keys]
                if len(mine) >= len(keys) * per and all(
                    int(c.address.rsplit(":", 1)[1]) in gone for c, _ in mine
                ):
                    break
                time.sleep(0.001)
            if n == singles - 1:
                what = f"one identity ({per} connections) at a time, {singles} times"
                _report(what, cuts, removed_at, gone)
                cuts.clear()
        what = f"{len(batches[-1])} identities ({len(batches[-1]) * per} connections) at once"
        _report(what, cuts, removed_at, gone)
        parent_end.send("done")
        proc.join(10)
        guarded.close(0)
        auth.stop()
        store.close()
    ctx.destroy(linger=0)


def _report(
    what: str,
    cuts: list[tuple[zsec.Cut, float]],
    removed_at: dict[str, float],
    gone: dict[int, float],
) -> None:
    to_cut, to_disc = [], []
    for cut, at in cuts:
        if cut.identity not in removed_at:
            continue  # a refused reconnect caught as a silent connection
        t0 = removed_at[cut.identity]
        to_cut.append((at - t0) * 1000)
        port = int(cut.address.rsplit(":", 1)[1])
        if port in gone:
            to_disc.append((gone[port] - t0) * 1000)
    print(f"{what}: ms from the store reflecting the removal")
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
