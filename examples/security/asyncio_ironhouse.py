#!/usr/bin/env python3
"""Ironhouse under asyncio: pyzmq's zmq.auth API from zsec.auth, keys checked by a coroutine.

The authenticator is zsec.auth's AsyncioAuthenticator (a pyzmq program only
changes its import). Client keys are decided by a coroutine, as an async
database lookup would; it runs on this event loop, while zsec's ZAP thread
does everything else, so the loop never waits for an authentication.

Proves: a client whose key the coroutine knows receives "Hello" (and the
server sees its User-Id); a client with an unknown key is refused.
"""

import asyncio
import logging
import sys
import tempfile

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

import zsec
from zsec.auth import create_certificates, load_certificate
from zsec.auth.asyncio import AsyncioAuthenticator

HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class Registry:
    """Stands for an async database of client keys (pyzmq's credentials provider shape)."""

    def __init__(self, known: set[bytes]) -> None:
        self.known = known

    async def callback(self, domain: str, key: bytes) -> bool:
        await asyncio.sleep(0.01)  # the query
        return key in self.known


async def handshake(sock: zmq.asyncio.Socket, endpoint: str) -> dict:
    """Connect and return the first handshake event of the socket's monitor."""
    monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
    try:
        sock.connect(endpoint)
        return await asyncio.wait_for(recv_monitor_message(monitor), 10)
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


async def run(ctx: zmq.asyncio.Context, tmp: str) -> None:
    server_public, server_secret = load_certificate(create_certificates(tmp, "server")[1])
    client_public, client_secret = load_certificate(create_certificates(tmp, "client")[1])

    auth = AsyncioAuthenticator(ctx)
    auth.start()  # from a coroutine: coroutine callbacks run on this loop
    try:
        auth.verbose = True
        auth.configure_curve_callback("global", Registry({client_public}))

        server = ctx.socket(zmq.ROUTER)
        server.linger = 0
        # CURVE + ZAP domain "global" + enforcement: refuses if no authenticator runs.
        zsec.curve_server(server, zsec.Cert.from_keys(server_public, server_secret), "global")
        port = server.bind_to_random_port("tcp://127.0.0.1")
        endpoint = f"tcp://127.0.0.1:{port}"

        client = ctx.socket(zmq.DEALER)
        client.linger = 0
        client.curve_publickey, client.curve_secretkey = client_public, client_secret
        client.curve_serverkey = server_public
        event = await handshake(client, endpoint)
        if event["event"] != zmq.EVENT_HANDSHAKE_SUCCEEDED:
            raise RuntimeError(f"the known client was refused: {event['event']!r}")
        await client.send(b"Hello")
        _, message = await asyncio.wait_for(server.recv_multipart(copy=False), 10)
        if message.bytes != b"Hello" or message.get("User-Id") != client_public.decode():
            raise RuntimeError("the server did not get Hello from the known client")

        intruder = ctx.socket(zmq.DEALER)
        intruder.linger = 0
        intruder.curve_publickey, intruder.curve_secretkey = zmq.curve_keypair()
        intruder.curve_serverkey = server_public
        event = await handshake(intruder, endpoint)
        if event["event"] != zmq.EVENT_HANDSHAKE_FAILED_AUTH or event["value"] != 400:
            raise RuntimeError(f"the unknown client was not refused: {event['event']!r}")
    finally:
        auth.stop()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    ctx = zmq.asyncio.Context()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run(ctx, tmp))
    except Exception as exc:  # noqa: BLE001 - one clear line, then a failing exit code
        print(f"Asyncio Ironhouse test FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.destroy(linger=0)
    print("Asyncio Ironhouse test OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
