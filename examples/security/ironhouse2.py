#!/usr/bin/env python3
"""Ironhouse, model 2: server and client apart, certificates on disk (CZMQ's ironhouse2.c).

As a real deployment does it: each side has its own files. The server has
its keypair (server.key + server.key_secret) and a ".curve" directory of the
client public certificates it trusts; the client has its keypair and only the
server's *public* certificate. Each side loads what it needs from disk.

Proves: the client, loaded from its files, receives "Hello" from the server
running in another thread with its own context; a client whose certificate
is not in ".curve" is refused.
"""

import logging
import os
import queue
import shutil
import sys
import tempfile
import threading

import zmq

import zsec


def provision(base: str) -> tuple[str, str]:
    """Make both keypairs and hand out public files, as an operator would."""
    server_dir, client_dir = os.path.join(base, "server"), os.path.join(base, "client")
    trusted = os.path.join(server_dir, ".curve")
    for path in (server_dir, client_dir, trusted):
        os.mkdir(path, 0o700)
    server_cert = zsec.Cert()
    server_cert.set_meta("name", "Ironhouse server")
    server_cert.save(os.path.join(server_dir, "server.key"))
    client_cert = zsec.Cert()
    client_cert.set_meta("name", "Ironhouse client")
    client_cert.save(os.path.join(client_dir, "client.key"))
    # Public files only cross over: the secrets stay where they were made.
    shutil.copy(os.path.join(client_dir, "client.key"), os.path.join(trusted, "client.key"))
    shutil.copy(os.path.join(server_dir, "server.key"), os.path.join(client_dir, "server.key"))
    return server_dir, client_dir


def server_task(server_dir: str, ports: queue.Queue[int], done: threading.Event) -> None:
    ctx = zmq.Context()
    try:
        with zsec.Auth(ctx, verbose=True) as auth:
            auth.configure_curve("*", os.path.join(server_dir, ".curve"))
            server_cert = zsec.Cert.load(os.path.join(server_dir, "server.key"))
            server = ctx.socket(zmq.PUSH)
            server.linger, server.sndtimeo = 0, 5000
            zsec.curve_server(server, server_cert)
            ports.put(server.bind_to_random_port("tcp://127.0.0.1"))
            server.send(b"Hello")  # waits for the first admitted client
            done.wait(10)
    finally:
        ctx.destroy(linger=0)


def connect_client(
    ctx: zmq.Context, cert: zsec.Cert, server_key: bytes, port: int
) -> tuple[zmq.Socket, zsec.Handshake]:
    client = ctx.socket(zmq.PULL)
    client.linger, client.rcvtimeo = 0, 5000
    zsec.curve_client(client, cert, server_key)
    with zsec.HandshakeMonitor(client) as monitor:
        client.connect(f"tcp://127.0.0.1:{port}")
        return client, monitor.wait()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    ctx = zmq.Context()
    done = threading.Event()
    ports: queue.Queue[int] = queue.Queue()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server_dir, client_dir = provision(tmp)
            server = threading.Thread(target=server_task, args=(server_dir, ports, done))
            server.start()
            try:
                try:
                    port = ports.get(timeout=10)
                except queue.Empty:
                    raise RuntimeError("the server thread did not start") from None
                client_cert = zsec.Cert.load(os.path.join(client_dir, "client.key"))
                server_public = zsec.Cert.load(os.path.join(client_dir, "server.key"))
                if server_public.secret_key is not None:
                    raise RuntimeError("the client side holds the server's secret key")
                client, outcome = connect_client(ctx, client_cert, server_public.public_key, port)
                if not outcome.ok:
                    raise RuntimeError(f"the provisioned client was refused: {outcome}")
                if client.recv() != b"Hello":
                    raise RuntimeError("the client did not receive Hello")
                _, outcome = connect_client(ctx, zsec.Cert(), server_public.public_key, port)
                if outcome.zap_status != 400:
                    raise RuntimeError(f"an unprovisioned client was not refused: {outcome}")
            finally:
                done.set()
                server.join(10)
    except Exception as exc:  # noqa: BLE001 - one clear line, then a failing exit code
        print(f"Ironhouse2 test FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.destroy(linger=0)
    print("Ironhouse2 test OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
