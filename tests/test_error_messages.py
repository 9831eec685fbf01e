"""Mistakes seen in trials get messages that say what is wrong and what to do instead."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import zmq

import zsec

from .helpers import attempt, serve, socket

NO_AUTH = "no ZAP authenticator is running on this server socket's zmq context"


def test_curve_helpers_name_the_role_and_the_missing_secret_file(
    ctx: zmq.Context[Any], tmp_path: Path
) -> None:
    path = tmp_path / "server.key"
    zsec.Cert().save_public(path)
    public_only = zsec.Cert.load(path)
    with socket(ctx, zmq.ROUTER) as sock:
        with pytest.raises(zsec.CertificateError) as server_error:
            zsec.curve_server(sock, public_only)
        with pytest.raises(zsec.CertificateError) as client_error:
            zsec.curve_client(sock, public_only, zsec.Cert())
    for role, error in (("curve_server", server_error), ("curve_client", client_error)):
        message = str(error.value)
        assert message.startswith(f"{role} needs the certificate's secret key")
        assert f"{path} was loaded without one: {path}_secret is missing" in message


def test_a_public_only_cert_made_in_memory_says_what_it_lacks(ctx: zmq.Context[Any]) -> None:
    cert = zsec.Cert.from_keys(zsec.Cert().public_key)
    with socket(ctx, zmq.ROUTER) as sock, pytest.raises(zsec.CertificateError) as error:
        zsec.curve_server(sock, cert)
    assert "curve_server needs a certificate with its secret key" in str(error.value)


@pytest.mark.parametrize("given", ["certs/server.key", Path("certs/server.key"), "server.key"])
def test_a_file_path_for_the_server_key_points_to_cert_load(
    ctx: zmq.Context[Any], given: object
) -> None:
    with socket(ctx, zmq.DEALER) as sock, pytest.raises(zsec.ZsecTypeError) as error:
        zsec.curve_client(sock, zsec.Cert(), given)  # type: ignore[arg-type]
    assert "looks like a file path; pass zsec.Cert.load(" in str(error.value)
    assert str(given) in str(error.value)


def test_a_file_path_for_the_cert_points_to_cert_load(ctx: zmq.Context[Any]) -> None:
    with socket(ctx, zmq.ROUTER) as sock, pytest.raises(zsec.ZsecTypeError) as error:
        zsec.curve_server(sock, "certs/server.key_secret")  # type: ignore[arg-type]
    assert "looks like a file path; pass zsec.Cert.load('certs/server.key_secret')" in str(
        error.value
    )


def test_a_z85_server_key_with_a_slash_is_still_a_key(ctx: zmq.Context[Any]) -> None:
    server = next(c for c in iter(zsec.Cert, None) if "/" in c.public_txt)
    with socket(ctx, zmq.DEALER) as sock:
        zsec.curve_client(sock, zsec.Cert(), server.public_txt)  # no "looks like a path"


def _no_auth_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if NO_AUTH in r.getMessage()]


def test_a_server_without_an_authenticator_is_warned_about_once(
    ctx: zmq.Context[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="zsec.auth")
    first, _ = serve(ctx, zsec.null_server)
    second, _ = serve(ctx, zsec.plain_server)
    warnings = _no_auth_warnings(caplog)
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "start zsec.Auth(ctx) on the same context" in warnings[0].getMessage()
    # The probe left the endpoint free: an authenticator can still start.
    with zsec.Auth(ctx):
        pass
    first.close()
    second.close()


def test_no_warning_when_an_authenticator_runs(
    ctx: zmq.Context[Any], caplog: pytest.LogCaptureFixture
) -> None:
    from zmq.auth.thread import ThreadAuthenticator

    with zsec.Auth(ctx):
        server, _ = serve(ctx, zsec.null_server)
        server.close()
    other: zmq.Context[Any] = zmq.Context()
    pyzmq_auth = ThreadAuthenticator(other)
    pyzmq_auth.start()
    try:
        server, _ = serve(other, zsec.null_server)  # someone else's handler counts too
        server.close()
    finally:
        pyzmq_auth.stop()
        other.destroy(linger=0)
    assert _no_auth_warnings(caplog) == []


def test_a_refused_curve_client_hears_both_likely_causes(ctx: zmq.Context[Any]) -> None:
    server_cert = zsec.Cert()
    with zsec.Auth(ctx) as auth:
        auth.configure_curve("*", zsec.CURVE_ALLOW_ANY)
        _server, endpoint = serve(ctx, lambda s: zsec.curve_server(s, server_cert))
        wrong_key = zsec.Cert().public_key
        verdict, _ = attempt(ctx, endpoint, lambda s: zsec.curve_client(s, zsec.Cert(), wrong_key))
    assert not verdict.ok
    assert "wrong server key" in verdict.reason and "no authenticator" in verdict.reason
