"""``zsec demo``: the five security patterns, each proven in-process in a few milliseconds.

Every pattern with a gate is shown both ways: the legitimate client receives
"Hello" and an intruder is refused. The example scripts in
examples/security/ teach the same patterns one file each.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, TextIO

import zmq

from ._auth import Auth
from ._cert import Cert
from ._monitor import Handshake, HandshakeMonitor
from ._sockets import curve_client, curve_server, null_server, plain_client, plain_server
from ._zap import CURVE_ALLOW_ANY

Setup = Callable[[zmq.Socket[Any]], None]


class DemoFailure(Exception):  # internal: becomes a ZsecError in the CLI
    """A pattern did not behave as it must."""


def _connect(
    ctx: zmq.Context[Any], endpoint: str, setup: Setup
) -> tuple[zmq.Socket[Any], Handshake]:
    client = ctx.socket(zmq.PULL)
    client.linger, client.rcvtimeo = 0, 5000
    setup(client)
    with HandshakeMonitor(client) as monitor:
        client.connect(endpoint)
        return client, monitor.wait(5.0)


def _prove(
    ctx: zmq.Context[Any],
    server_setup: Setup,
    client_setup: Setup,
    intruder: tuple[str, Setup, str] | None,
    secured: bool = True,
) -> str:
    server = ctx.socket(zmq.PUSH)
    server.linger, server.sndtimeo = 0, 5000
    server_setup(server)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    if secured:
        client, outcome = _connect(ctx, endpoint, client_setup)
        if not outcome.ok:
            raise DemoFailure(f"the legitimate client was refused: {outcome}")
    else:
        client = ctx.socket(zmq.PULL)
        client.linger, client.rcvtimeo = 0, 5000
        client.connect(endpoint)
    server.send(b"Hello")
    if client.recv() != b"Hello":
        raise DemoFailure("the legitimate client did not receive Hello")
    if intruder is None:
        return 'client received "Hello" (anyone could have)'
    label, setup, source = intruder
    _, outcome = _connect(ctx, f"tcp://{source}127.0.0.1:{port}", setup)
    if outcome.ok:
        raise DemoFailure(f"the intruder ({label}) got in")
    return f'client received "Hello"; {label}: {outcome}'


def _patterns(tmp: str) -> list[tuple[str, str, Callable[[zmq.Context[Any], Auth], str]]]:
    server_cert, client_cert = Cert(), Cert()

    def grasslands(ctx: zmq.Context[Any], auth: Auth) -> str:
        return _prove(ctx, lambda s: None, lambda s: None, None, secured=False)

    def strawhouse(ctx: zmq.Context[Any], auth: Auth) -> str:
        auth.allow("127.0.0.1")
        return _prove(
            ctx,
            null_server,
            lambda s: None,
            ("client from 127.0.0.2", lambda s: None, "127.0.0.2:0;"),
        )

    def woodhouse(ctx: zmq.Context[Any], auth: Auth) -> str:
        path = os.path.join(tmp, "passwords")
        with open(path, "w", opener=lambda p, f: os.open(p, f, 0o600)) as handle:
            handle.write("admin=secret\n")
        auth.configure_plain("*", path)
        return _prove(
            ctx,
            plain_server,
            lambda s: plain_client(s, "admin", "secret"),
            ("wrong password", lambda s: plain_client(s, "admin", "guess"), ""),
        )

    def stonehouse(ctx: zmq.Context[Any], auth: Auth) -> str:
        auth.configure_curve("*", CURVE_ALLOW_ANY)
        return _prove(
            ctx,
            lambda s: curve_server(s, server_cert),
            lambda s: curve_client(s, client_cert, server_cert),
            ("wrong server key", lambda s: curve_client(s, Cert(), Cert()), ""),
        )

    def ironhouse(ctx: zmq.Context[Any], auth: Auth) -> str:
        trusted = os.path.join(tmp, ".curve")
        os.mkdir(trusted, 0o700)
        client_cert.save_public(os.path.join(trusted, "client.key"))
        auth.configure_curve("*", trusted)
        return _prove(
            ctx,
            lambda s: curve_server(s, server_cert),
            lambda s: curve_client(s, client_cert, server_cert),
            ("unknown key", lambda s: curve_client(s, Cert(), server_cert), ""),
        )

    return [
        ("Grasslands", "none", grasslands),
        ("Strawhouse", "NULL", strawhouse),
        ("Woodhouse", "PLAIN", woodhouse),
        ("Stonehouse", "CURVE", stonehouse),
        ("Ironhouse", "CURVE", ironhouse),
    ]


def run_demo(out: TextIO) -> None:
    """Prove each pattern, one line each; ``DemoFailure`` names the first that fails."""
    with tempfile.TemporaryDirectory(prefix="zsec-demo-") as tmp:
        patterns = _patterns(tmp)
        for name, mechanism, prove in patterns:
            ctx: zmq.Context[Any] = zmq.Context()
            start = time.perf_counter()
            try:
                with Auth(ctx) as auth:
                    proven = prove(ctx, auth)
            except DemoFailure as exc:
                raise DemoFailure(f"{name}: {exc}") from None
            finally:
                ctx.destroy(linger=0)
            elapsed = (time.perf_counter() - start) * 1000
            out.write(f"{name:<11} {mechanism:<6} {proven}  ({elapsed:.0f} ms)\n")
        out.write(f"All {len(patterns)} patterns proven.\n")
