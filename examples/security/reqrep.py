#!/usr/bin/env python3
"""Secure request-reply: DEALER clients, a ROUTER server that knows who is asking.

Each client certificate carries metadata (here "name" and "role"). When the
authenticator admits a client it attaches the certificate's metadata and the
client's key (as User-Id) to the connection, and every message the server
receives carries them as properties. The server can answer by identity
without any login protocol of its own.

Only trust properties the certificate itself sets: a client can add any
other name to its own handshake metadata. User-Id is always set by zsec.

Proves: two known clients get answers addressed to their certificate's name
and role; a client with an unknown key is refused.
"""

import logging
import sys

import zmq

import zsec


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    ctx = zmq.Context()
    try:
        with zsec.Auth(ctx, verbose=True) as auth:
            server_cert = zsec.Cert()
            people = {"Alice": "admin", "Bob": "reader"}
            trusted = zsec.CertStore()
            client_certs = {}
            for name, role in people.items():
                cert = zsec.Cert()
                cert.set_meta("name", name)
                cert.set_meta("role", role)
                trusted.insert(cert)
                client_certs[name] = cert
            auth.configure_curve("*", trusted)

            server = ctx.socket(zmq.ROUTER)
            server.linger, server.rcvtimeo = 0, 5000
            zsec.curve_server(server, server_cert)
            port = server.bind_to_random_port("tcp://127.0.0.1")

            clients = {}
            for name, cert in client_certs.items():
                client = ctx.socket(zmq.DEALER)
                client.linger, client.rcvtimeo = 0, 5000
                zsec.curve_client(client, cert, server_cert.public_key)
                client.connect(f"tcp://127.0.0.1:{port}")
                client.send(b"may I?")
                clients[name] = client

            for _ in clients:
                identity, request = server.recv_multipart(copy=False)
                user_id = request.get("User-Id")  # the client's Z85 public key
                answer = f"hello {request.get('name')}, you are {request.get('role')}"
                if trusted.lookup(user_id) is None:
                    raise RuntimeError("a request came from a key the store does not hold")
                server.send_multipart([identity, answer.encode()])

            for name, client in clients.items():
                expected = f"hello {name}, you are {people[name]}".encode()
                if client.recv() != expected:
                    raise RuntimeError(f"{name} got the wrong answer")

            stranger = ctx.socket(zmq.DEALER)
            stranger.linger = 0
            zsec.curve_client(stranger, zsec.Cert(), server_cert.public_key)
            with zsec.HandshakeMonitor(stranger) as monitor:
                stranger.connect(f"tcp://127.0.0.1:{port}")
                outcome = monitor.wait()
            if outcome.zap_status != 400:
                raise RuntimeError(f"the unknown client was not refused: {outcome}")
    except Exception as exc:  # noqa: BLE001 - one clear line, then a failing exit code
        print(f"DEALER-ROUTER test FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.destroy(linger=0)
    print("DEALER-ROUTER test OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
