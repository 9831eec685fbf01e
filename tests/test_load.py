"""Load: hundreds of concurrent clients, valid and invalid mixed; exactly the valid get in."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import zmq

import zsec

from .helpers import wait_for

CURVE_CLIENTS = 200
PLAIN_CLIENTS = 100


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_hundreds_of_concurrent_clients(tmp_path: Path) -> None:
    baseline = _open_fds()
    rng = random.Random(5)
    ctx: zmq.Context[Any] = zmq.Context()
    ctx.max_sockets = 4096
    auth = zsec.Auth(ctx)
    clients: list[tuple[zmq.Socket[Any], zsec.HandshakeMonitor, bool]] = []
    servers: list[zmq.Socket[Any]] = []
    try:
        trusted = zsec.CertStore()
        server_cert = zsec.Cert()
        curve_certs = [(zsec.Cert(), i % 2 == 0) for i in range(CURVE_CLIENTS)]
        for cert, valid in curve_certs:
            if valid:
                trusted.insert(cert)
        auth.configure_curve("*", trusted)
        passwords = tmp_path / "passwords"
        passwords.write_text("".join(f"user{i}=pw-{i}\n" for i in range(PLAIN_CLIENTS)))
        auth.configure_plain("*", passwords)

        curve_server = ctx.socket(zmq.PULL)
        zsec.curve_server(curve_server, server_cert)
        plain_server = ctx.socket(zmq.PULL)
        zsec.plain_server(plain_server)
        servers += [curve_server, plain_server]
        endpoints = []
        for server in servers:
            server.linger = 0
            server.bind("tcp://127.0.0.1:*")
            endpoints.append(server.getsockopt_string(zmq.LAST_ENDPOINT))

        def new_client() -> tuple[zmq.Socket[Any], zsec.HandshakeMonitor]:
            sock = ctx.socket(zmq.PUSH)
            sock.linger = 0
            return sock, zsec.HandshakeMonitor(sock)

        for cert, valid in curve_certs:
            sock, monitor = new_client()
            zsec.curve_client(sock, cert, server_cert)
            clients.append((sock, monitor, valid))
        for i in range(PLAIN_CLIENTS):
            valid = rng.random() < 0.5
            sock, monitor = new_client()
            zsec.plain_client(sock, f"user{i}", f"pw-{i}" if valid else f"pw-{i}-wrong")
            clients.append((sock, monitor, valid))
        rng.shuffle(clients)
        for sock, _, _ in clients:  # all at once: the handshakes run concurrently
            mechanism = sock.getsockopt(zmq.MECHANISM)
            sock.connect(endpoints[0] if mechanism == zmq.CURVE else endpoints[1])

        admitted = refused = 0
        for _sock, monitor, valid in clients:
            outcome = monitor.wait(30)
            if valid:
                assert outcome.ok, outcome
                admitted += 1
            else:
                assert outcome.zap_status == 400, outcome
                refused += 1
        assert admitted + refused == CURVE_CLIENTS + PLAIN_CLIENTS
        assert admitted >= 100 and refused >= 100
    finally:
        for sock, monitor, _ in clients:
            monitor.close()
            sock.close(linger=0)
        for server in servers:
            server.close(linger=0)
        auth.stop()
        ctx.term()
    wait_for(lambda: _open_fds() == baseline, timeout=20, what="file descriptors released")
