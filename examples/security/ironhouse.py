#!/usr/bin/env python3
"""Ironhouse: CURVE with known clients only (CZMQ's examples/security/ironhouse.c, ported).

The server trusts exactly the public certificates in a directory (".curve"
by convention). The authenticator follows the directory live: copy a
client's public certificate in to admit it, delete the file to revoke it.

Proves: a client whose certificate is in the directory receives "Hello"
(and the server learns its identity); a client with an unknown key is
refused.
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
            client_cert = zsec.Cert()
            client_cert.set_meta("name", "Client One")
            client_cert.save_public(os.path.join(trusted, "client.key"))
            auth.configure_curve("*", trusted)

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
                raise RuntimeError(f"the trusted client was refused: {outcome}")
            server.send(b"Hello")
            if client.recv() != b"Hello":
                raise RuntimeError("the trusted client did not receive Hello")

            intruder = ctx.socket(zmq.PULL)
            intruder.linger = 0
            zsec.curve_client(intruder, zsec.Cert(), server_cert.public_key)
            with zsec.HandshakeMonitor(intruder) as monitor:
                intruder.connect(f"tcp://127.0.0.1:{port}")
                outcome = monitor.wait()
            if outcome.zap_status != 400:
                raise RuntimeError(f"the unknown client was not refused: {outcome}")
    except Exception as exc:  # noqa: BLE001 - one clear line, then a failing exit code
        print(f"Ironhouse test FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.destroy(linger=0)
    print("Ironhouse test OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
