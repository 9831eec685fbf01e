#!/usr/bin/env python3
"""Stonehouse: CURVE, any client that knows the server's key (CZMQ's stonehouse.c, ported).

Traffic is encrypted and the client is sure it talks to the real server,
but the server accepts any client. Even so, run an authenticator with
CURVE_ALLOW_ANY and set the server up with zsec.curve_server: pyzmq's
version of this example passes with no authenticator at all, because libzmq
then admits every CURVE client silently; with the helper, a missing
authenticator refuses them instead.

Proves: a client with the server's public key receives "Hello"; a client
that was given a wrong server key cannot complete the handshake.
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
            auth.configure_curve("*", zsec.CURVE_ALLOW_ANY)
            server_cert = zsec.Cert()
            client_cert = zsec.Cert()

            server = ctx.socket(zmq.PUSH)
            server.linger, server.sndtimeo = 0, 5000
            zsec.curve_server(server, server_cert)
            port = server.bind_to_random_port("tcp://127.0.0.1")

            client = ctx.socket(zmq.PULL)
            client.linger, client.rcvtimeo = 0, 5000
            zsec.curve_client(client, client_cert, server_cert.public_key)
            with zsec.HandshakeMonitor(client) as monitor:
                client.connect(f"tcp://127.0.0.1:{port}")
                outcome = monitor.wait()
            if not outcome.ok:
                raise RuntimeError(f"the client was refused: {outcome}")
            server.send(b"Hello")
            if client.recv() != b"Hello":
                raise RuntimeError("the client did not receive Hello")

            intruder = ctx.socket(zmq.PULL)
            intruder.linger = 0
            forged_server_key = zsec.Cert().public_key
            zsec.curve_client(intruder, zsec.Cert(), forged_server_key)
            with zsec.HandshakeMonitor(intruder) as monitor:
                intruder.connect(f"tcp://127.0.0.1:{port}")
                outcome = monitor.wait()
            if outcome.ok:
                raise RuntimeError("a client with a wrong server key completed the handshake")
    except Exception as exc:  # noqa: BLE001 - one clear line, then a failing exit code
        print(f"Stonehouse test FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.destroy(linger=0)
    print("Stonehouse test OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
