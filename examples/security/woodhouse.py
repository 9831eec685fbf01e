#!/usr/bin/env python3
"""Woodhouse: PLAIN usernames and passwords (CZMQ's examples/security/woodhouse.c, ported).

Passwords travel in clear text, so use PLAIN only on networks you trust. The
authenticator checks them against a password file (CZMQ's name=password
format; `zsec passwd FILE USER` adds hashed entries).

Proves: the client with the right password receives "Hello"; a client with a
wrong password is refused.
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
            passwords = os.path.join(tmp, "passwords")
            with open(passwords, "w", opener=lambda p, f: os.open(p, f, 0o600)) as handle:
                handle.write("admin=secret\n")
            auth.configure_plain("*", passwords)

            server = ctx.socket(zmq.PUSH)
            server.linger, server.sndtimeo = 0, 5000
            zsec.plain_server(server)
            port = server.bind_to_random_port("tcp://127.0.0.1")

            client = ctx.socket(zmq.PULL)
            client.linger, client.rcvtimeo = 0, 5000
            zsec.plain_client(client, "admin", "secret")
            with zsec.HandshakeMonitor(client) as monitor:
                client.connect(f"tcp://127.0.0.1:{port}")
                outcome = monitor.wait()
            if not outcome.ok:
                raise RuntimeError(f"the client with the right password was refused: {outcome}")
            server.send(b"Hello")
            if client.recv() != b"Hello":
                raise RuntimeError("the client did not receive Hello")

            intruder = ctx.socket(zmq.PULL)
            intruder.linger = 0
            zsec.plain_client(intruder, "admin", "guess")
            with zsec.HandshakeMonitor(intruder) as monitor:
                intruder.connect(f"tcp://127.0.0.1:{port}")
                outcome = monitor.wait()
            if outcome.zap_status != 400:
                raise RuntimeError(f"the client with a wrong password was not refused: {outcome}")
    except Exception as exc:  # noqa: BLE001 - one clear line, then a failing exit code
        print(f"Woodhouse test FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.destroy(linger=0)
    print("Woodhouse test OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
