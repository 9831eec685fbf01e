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
