#!/usr/bin/env python3
"""Ironhouse with live revocation: deleting a certificate cuts its live session too.

ZAP authenticates a connection once, at its handshake; on its own, deleting
a client's certificate only stops its next connection. ``auth.guard(server)``
makes revocation reach the established session: the server receives only
messages from peers the authenticator still trusts, and a revoked peer's
connection is closed within milliseconds, even if it stays silent.

Proves: alice and bob both get through; bob's certificate file is deleted;
bob's connection is closed and his reconnect refused, nothing more from him
reaches the server, and alice carries on.
"""

import logging
import os
import sys
import tempfile

import zmq

import zsec


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    ctx = zmq.Context()
    try:
        with tempfile.TemporaryDirectory() as tmp, zsec.Auth(ctx, verbose=True) as auth:
            trusted = os.path.join(tmp, ".curve")
            os.mkdir(trusted, 0o700)
            server_cert = zsec.Cert()
            certs = {name: zsec.Cert() for name in ("alice", "bob")}
            for name, cert in certs.items():
                cert.save_public(os.path.join(trusted, f"{name}.key"))
            auth.configure_curve("*", trusted)

            server = ctx.socket(zmq.ROUTER)
            server.linger = 0
            zsec.curve_server(server, server_cert)
            cuts = []
            guarded = auth.guard(server, on_cut=cuts.append)
            port = server.bind_to_random_port("tcp://127.0.0.1")

            clients, monitors = {}, {}
            for name, cert in certs.items():
                client = ctx.socket(zmq.DEALER)
                client.linger, client.rcvtimeo = 0, 5000
                zsec.curve_client(client, cert, server_cert)
                monitors[name] = zsec.HandshakeMonitor(client)
                client.connect(f"tcp://127.0.0.1:{port}")
                if not monitors[name].wait().ok:
                    raise RuntimeError(f"{name} was refused before any revocation")
                clients[name] = client

            def exchange(name):
                clients[name].send(name.encode())
                if not guarded.poll(5000):
                    raise RuntimeError(f"the server did not hear from {name}")
                routing_id, body = guarded.recv_multipart()
                guarded.send_multipart([routing_id, b"Hello " + body])
                if clients[name].recv() != b"Hello " + name.encode():
                    raise RuntimeError(f"{name} got no answer")

            exchange("alice")
            exchange("bob")

            os.unlink(os.path.join(trusted, "bob.key"))  # revoke bob
            closed = monitors["bob"].wait()
            if closed.event != zmq.EVENT_DISCONNECTED:
                raise RuntimeError(f"bob's connection was not closed: {closed}")
            again = monitors["bob"].wait()
            if again.zap_status != 400:
                raise RuntimeError(f"bob's reconnect was not refused: {again}")
            clients["bob"].send(b"bob again")  # goes nowhere
            exchange("alice")
            if guarded.poll(200):
                raise RuntimeError("a message from bob reached the server after revocation")
            if [cut.reason for cut in cuts] != ["key no longer trusted"]:
                raise RuntimeError(f"expected one cut of bob, got {cuts}")
            print(f"bob's session cut ({cuts[0].reason}); alice carries on")
            for name in clients:
                monitors[name].close()
                clients[name].close()
            guarded.close()
    except Exception as exc:  # noqa: BLE001 - one clear line, then a failing exit code
        print(f"Ironhouse revoke test FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.destroy(linger=0)
    print("Ironhouse revoke test OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
