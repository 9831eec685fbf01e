#!/usr/bin/env python3
"""Strawhouse: NULL mechanism, clients filtered by address (CZMQ's strawhouse.c, ported).

No encryption; the authenticator only lets listed addresses in. CZMQ's
original sets no ZAP domain on the server, so its filter never runs;
zsec.null_server sets one (and makes the server refuse everyone if the
authenticator is not running).

Proves: a client from 127.0.0.1 receives "Hello"; a client from 127.0.0.2
(another loopback address) is refused.
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
            auth.allow("127.0.0.1")

            server = ctx.socket(zmq.PUSH)
            server.linger, server.sndtimeo = 0, 5000
            zsec.null_server(server)
            port = server.bind_to_random_port("tcp://127.0.0.1")

            client = ctx.socket(zmq.PULL)
            client.linger, client.rcvtimeo = 0, 5000
            with zsec.HandshakeMonitor(client) as monitor:
                client.connect(f"tcp://127.0.0.1:{port}")
                outcome = monitor.wait()
            if not outcome.ok:
                raise RuntimeError(f"the allowed client was not admitted: {outcome}")
            server.send(b"Hello")
            if client.recv() != b"Hello":
                raise RuntimeError("the allowed client did not receive Hello")

            intruder = ctx.socket(zmq.PULL)
            intruder.linger = 0
            with zsec.HandshakeMonitor(intruder) as monitor:
                # Connect from source address 127.0.0.2, which is not allowed.
                intruder.connect(f"tcp://127.0.0.2:0;127.0.0.1:{port}")
                outcome = monitor.wait()
            if outcome.zap_status != 400:
                raise RuntimeError(f"the client from 127.0.0.2 was not refused: {outcome}")
    except Exception as exc:  # noqa: BLE001 - one clear line, then a failing exit code
        print(f"Strawhouse test FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.destroy(linger=0)
    print("Strawhouse test OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
