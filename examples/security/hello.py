#!/usr/bin/env python3
"""Hello: is CURVE security available here? (CZMQ's examples/security/hello.c, ported).

CURVE needs libzmq built with libsodium; pyzmq's wheels are. Proves it by
making a keypair with zsec and having libzmq derive the same public key.
"""

import sys

import zmq

import zsec


def main() -> int:
    if not zmq.has("curve"):
        print("Hello test FAILED: this libzmq was built without CURVE support", file=sys.stderr)
        return 1
    cert = zsec.Cert()
    assert cert.secret_txt is not None
    if zmq.curve_public(cert.secret_txt.encode()) != cert.public_txt.encode():
        print("Hello test FAILED: libzmq and libsodium disagree on a public key", file=sys.stderr)
        return 1
    print(f"CURVE is available (libzmq {zmq.zmq_version()}, pyzmq {zmq.pyzmq_version()})")
    print("Hello test OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
