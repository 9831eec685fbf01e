"""A client's certificate cannot forge the grant the live-revocation guard judges it by."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import zmq

import zsec

from .helpers import bind_loopback, socket, wait_for


@pytest.mark.parametrize("name", ["X-Zsec-Grant", "x-zsec-grant"])
def test_a_certificate_claiming_a_null_grant_is_still_cut_when_revoked(
    ctx: zmq.Context[Any], tmp_path: Path, name: str
) -> None:
    # The client writes its certificate's metadata; the operator only drops
    # the public file into the trusted directory.
    client = zsec.Cert()
    client.set_meta(name, "1.n")  # a NULL grant never changes: never revoked
    trusted = tmp_path / "client.key"
    client.save_public(trusted)
    server_cert = zsec.Cert()
    auth = zsec.Auth(ctx)
    try:
        auth.configure_curve("global", str(tmp_path))
        cuts: list[zsec.Cut] = []
        with socket(ctx, zmq.PULL) as server, socket(ctx, zmq.PUSH) as push:
            zsec.curve_server(server, server_cert, "global")
            guarded = auth.guard(server, on_cut=cuts.append)
            zsec.curve_client(push, client, server_cert)
            push.connect(bind_loopback(server))
            push.send(b"before")
            frame = guarded.recv(copy=False)
            assert frame.bytes == b"before"
            assert frame.get("X-Zsec-Grant") != "1.n"
            trusted.unlink()
            wait_for(lambda: cuts, what="the revoked client's connection to be cut")
            assert cuts[0].reason == "key no longer trusted"
    finally:
        auth.stop()


def test_a_client_cannot_supply_the_grant_of_a_login_zsec_left_unstamped(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    # The first login after the password file changed is checked against the
    # reloaded entries and left unstamped, which the guard refuses (the
    # client redials). A client's own ZMTP metadata (ZMQ_METADATA) must not
    # fill that gap with a grant of its choosing.
    path = tmp_path / "passwords"
    path.write_bytes(b"admin=secret\n")
    auth = zsec.Auth(ctx)
    try:
        auth.configure_plain("global", zsec.PasswordFile(path, check_interval=0))
        with socket(ctx, zmq.PULL, 300) as server, socket(ctx, zmq.PUSH) as push:
            zsec.plain_server(server, "global")
            guarded = auth.guard(server)
            path.write_bytes(b"admin=secret\nguest=guest-pw\n")
            zsec.plain_client(push, "admin", "secret")
            push.setsockopt(zmq.METADATA, b"X-Zsec-Grant:1.n")  # a NULL grant: never revoked
            monitor = zsec.HandshakeMonitor(push)
            push.connect(bind_loopback(server))
            assert monitor.wait(5).ok
            monitor.close()
            push.send(b"forged")
            with pytest.raises(zmq.Again):
                guarded.recv()
            assert guarded.dropped == 1
    finally:
        auth.stop()
