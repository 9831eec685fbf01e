#!/usr/bin/env python3
"""Secure PUB-SUB: one publisher, several CURVE subscribers, strangers refused.

The publisher is the CURVE server and trusts a set of subscriber
certificates (here an in-memory CertStore; a directory works the same). It
uses XPUB with verbose subscriptions so it can wait until every admitted
subscriber has subscribed, instead of sleeping and hoping (PUB drops
messages sent before a subscription arrives).

Proves: three known subscribers each receive the update; a subscriber with
an unknown key is refused by the authenticator.
"""

import logging
import sys

import zmq

import zsec

SUBSCRIBERS = 3


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    ctx = zmq.Context()
    try:
        with zsec.Auth(ctx, verbose=True) as auth:
            publisher_cert = zsec.Cert()
            subscriber_certs = [zsec.Cert() for _ in range(SUBSCRIBERS)]
            trusted = zsec.CertStore()
            for cert in subscriber_certs:
                trusted.insert(cert)
            auth.configure_curve("*", trusted)

            publisher = ctx.socket(zmq.XPUB)
            publisher.linger, publisher.rcvtimeo, publisher.sndtimeo = 0, 5000, 5000
            publisher.xpub_verbose = True  # report every subscription, not only the first
            zsec.curve_server(publisher, publisher_cert)
            port = publisher.bind_to_random_port("tcp://127.0.0.1")

            subscribers = []
            for cert in subscriber_certs:
                sub = ctx.socket(zmq.SUB)
                sub.linger, sub.rcvtimeo = 0, 5000
                zsec.curve_client(sub, cert, publisher_cert.public_key)
                sub.subscribe(b"weather")
                with zsec.HandshakeMonitor(sub) as monitor:
                    sub.connect(f"tcp://127.0.0.1:{port}")
                    outcome = monitor.wait()
                if not outcome.ok:
                    raise RuntimeError(f"a known subscriber was refused: {outcome}")
                subscribers.append(sub)

            stranger = ctx.socket(zmq.SUB)
            stranger.linger = 0
            zsec.curve_client(stranger, zsec.Cert(), publisher_cert.public_key)
            stranger.subscribe(b"")
            with zsec.HandshakeMonitor(stranger) as monitor:
                stranger.connect(f"tcp://127.0.0.1:{port}")
                outcome = monitor.wait()
            if outcome.zap_status != 400:
                raise RuntimeError(f"the unknown subscriber was not refused: {outcome}")

            for _ in range(SUBSCRIBERS):  # one subscription message per admitted subscriber
                if publisher.recv() != b"\x01weather":
                    raise RuntimeError("unexpected subscription message")
            publisher.send(b"weather: sunny")
            for sub in subscribers:
                if sub.recv() != b"weather: sunny":
                    raise RuntimeError("a subscriber did not receive the update")
    except Exception as exc:  # noqa: BLE001 - one clear line, then a failing exit code
        print(f"PUB-SUB test FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.destroy(linger=0)
    print("PUB-SUB test OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
