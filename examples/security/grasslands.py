#!/usr/bin/env python3
"""Grasslands: no security at all (CZMQ's examples/security/grasslands.c, ported).

Anyone who can reach the port can connect, read and inject messages. The
baseline the other patterns improve on; there is no gate to prove.
"""

import sys

import zmq


def main() -> int:
    ctx = zmq.Context()
    try:
        server = ctx.socket(zmq.PUSH)
        server.linger, server.sndtimeo = 0, 5000
        port = server.bind_to_random_port("tcp://127.0.0.1")

        client = ctx.socket(zmq.PULL)
        client.linger, client.rcvtimeo = 0, 5000
        client.connect(f"tcp://127.0.0.1:{port}")

        server.send(b"Hello")
        if client.recv() != b"Hello":
            raise RuntimeError("the client did not receive Hello")
    except Exception as exc:  # noqa: BLE001 - one clear line, then a failing exit code
        print(f"Grasslands test FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.destroy(linger=0)
    print("Grasslands test OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
