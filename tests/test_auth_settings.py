"""Auth's settings: PLAIN passwords in a dict, the CURVE User-Id hook, unknown settings, start()."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

import zsec

from .helpers import attempt, fast_hash, login, serve

SERVER = zsec.Cert()
CLIENT = zsec.Cert()


@pytest.fixture
def auth(ctx: zmq.Context[Any]) -> Iterator[zsec.Auth]:
    with zsec.Auth(ctx) as authenticator:
        yield authenticator


def _user_id(ctx: zmq.Context[Any], domain: str = "global") -> tuple[zsec.Handshake, str | None]:
    server = serve(ctx, lambda s: zsec.curve_server(s, SERVER, domain))
    verdict, frame = attempt(
        ctx, server[1], lambda s: zsec.curve_client(s, CLIENT, SERVER), server=server[0]
    )
    return verdict, None if frame is None else frame.get("User-Id")


# -- PLAIN passwords given in memory ------------------------------------------------------


def test_plain_passwords_can_be_a_mapping_of_str_bytes_or_hashes(
    ctx: zmq.Context[Any], auth: zsec.Auth
) -> None:
    auth.configure_plain(
        "global",
        {"admin": "s3cret", b"ops": b"0ps-pw", "carol": fast_hash(b"carols-pw").decode()},
    )
    _, endpoint = serve(ctx, zsec.plain_server)
    assert login(ctx, endpoint, "admin", "s3cret").ok
    assert login(ctx, endpoint, "ops", "0ps-pw").ok
    assert login(ctx, endpoint, "carol", "carols-pw").ok
    assert login(ctx, endpoint, "admin", "s3cret!").zap_status == 400
    assert login(ctx, endpoint, "nobody", "s3cret").zap_status == 400
    table = auth.policy.plain["global"]
    assert isinstance(table, zsec.PasswordTable)
    assert "s3cret" not in repr(table) and "s3cret" not in repr(auth)


def test_a_password_table_is_used_as_given_and_none_removes_it(
    ctx: zmq.Context[Any], auth: zsec.Auth
) -> None:
    table = zsec.PasswordTable({"admin": "first"})
    auth.configure_plain("global", table)
    assert auth.policy.plain["global"] is table
    _, endpoint = serve(ctx, zsec.plain_server)
    assert login(ctx, endpoint, "admin", "first").ok
    table.replace({"admin": "second"})  # in force for the next login
    assert login(ctx, endpoint, "admin", "first").zap_status == 400
    assert login(ctx, endpoint, "admin", "second").ok
    auth.configure_plain("global", None)
    assert login(ctx, endpoint, "admin", "second").zap_status == 400


@pytest.mark.parametrize(
    ("passwords", "error"),
    [({"admin": 7}, zsec.ZsecTypeError), ({"x" * 256: "pw"}, zsec.PasswordError)],
)
def test_a_mapping_that_cannot_be_passwords_is_refused(
    auth: zsec.Auth, passwords: Any, error: type[Exception]
) -> None:
    with pytest.raises(error) as caught:
        auth.configure_plain("global", passwords)
    assert "pw" not in str(caught.value)
    assert "global" not in auth.policy.plain


# -- the User-Id hook -------------------------------------------------------------------


@pytest.mark.parametrize("source", ["store", "allow-any", "provider"])
def test_the_user_id_hook_names_clients_of_every_curve_source(
    ctx: zmq.Context[Any], auth: zsec.Auth, source: str
) -> None:
    if source == "store":
        store = zsec.CertStore()
        store.insert(CLIENT)
        auth.configure_curve("global", store)
    elif source == "allow-any":
        auth.configure_curve("global", zsec.CURVE_ALLOW_ANY)
    else:
        auth.configure_curve_callback("global", lambda domain, key: True)
    verdict, user_id = _user_id(ctx)
    assert verdict.ok and user_id == CLIENT.public_txt  # the default: the key in Z85
    seen: list[bytes] = []

    def name(key: bytes) -> str:
        seen.append(key)
        return "client-é"

    auth.curve_user_id = name
    verdict, user_id = _user_id(ctx)
    assert verdict.ok and user_id == "client-é"
    assert seen == [CLIENT.public_key]  # the raw 32-byte key, as pyzmq passes it
    auth.curve_user_id = None
    assert _user_id(ctx)[1] == CLIENT.public_txt


@pytest.mark.parametrize(
    "hook",
    [lambda key: 1 / 0, lambda key: "", lambda key: "a\0b", lambda key: "x" * 256, lambda key: 7],
    ids=["raising", "empty", "nul", "too-long", "not-text"],
)
def test_a_user_id_hook_that_fails_refuses_the_client_with_500(
    ctx: zmq.Context[Any], auth: zsec.Auth, hook: Any
) -> None:
    auth.configure_curve("global", zsec.CURVE_ALLOW_ANY)
    auth.curve_user_id = hook
    verdict, _ = _user_id(ctx)
    assert verdict.zap_status == 500
    assert auth.running


def test_the_user_id_hook_must_be_callable(auth: zsec.Auth) -> None:
    with pytest.raises(zsec.ZsecTypeError):
        auth.curve_user_id = "custom"  # type: ignore[assignment]
    assert auth.curve_user_id is None


# -- settings that do not exist ------------------------------------------------------------


def test_assigning_a_setting_auth_does_not_have_raises(auth: zsec.Auth) -> None:
    with pytest.raises(AttributeError, match="no setting 'verbosity'"):
        auth.verbosity = True  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        auth.allow = print  # type: ignore[method-assign]
    auth.verbose = True  # a real one still works
    assert auth.policy.verbose


def test_a_subclass_may_declare_settings_of_its_own(ctx: zmq.Context[Any]) -> None:
    class Tagged(zsec.Auth):
        tag: str

    with Tagged(ctx) as auth:
        auth.tag = "edge"
        assert auth.tag == "edge"
        with pytest.raises(AttributeError):
            auth.other = 1  # type: ignore[attr-defined]


# -- pyzmq habits -------------------------------------------------------------------------


@pytest.mark.parametrize("location", ["*", b"*"])
def test_pyzmqs_allow_any_string_is_refused_with_zsecs_name(auth: zsec.Auth, location: Any) -> None:
    with pytest.raises(zsec.ZsecValueError, match=r"zsec\.CURVE_ALLOW_ANY"):
        auth.configure_curve("global", location)
    assert "global" not in auth.policy.curve


def test_start_is_a_no_op_while_running_and_an_error_once_stopped(
    ctx: zmq.Context[Any],
) -> None:
    auth = zsec.Auth(ctx)
    auth.start()
    assert auth.running
    server = serve(ctx, zsec.null_server)
    assert attempt(ctx, server[1], lambda s: None)[0].ok
    auth.stop()
    with pytest.raises(zsec.AuthError, match=r"make a new zsec\.Auth"):
        auth.start()
