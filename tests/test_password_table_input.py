"""Password tables refuse what they cannot hold safely, without showing the password."""

from __future__ import annotations

import traceback
from typing import Any

import pytest
import zmq

import zsec
from zsec.auth.thread import ThreadAuthenticator

SECRET = "pässwörd-Sekret-4711"


def _everything_about(exc: BaseException) -> str:
    """All an error reporter could show: the chain, each exception's repr and args."""
    text = "".join(traceback.format_exception(exc))
    seen: BaseException | None = exc
    while seen is not None:
        text += repr(seen) + repr(seen.args)
        seen = seen.__cause__ or seen.__context__
    return text


def test_a_password_the_drop_in_encoding_cannot_hold_is_refused_without_showing_it(
    ctx: zmq.Context[Any],
) -> None:
    auth = ThreadAuthenticator(ctx, encoding="ascii")
    with pytest.raises(zsec.PasswordError) as caught:
        auth.configure_plain("*", {"bob": SECRET})
    assert "Sekret" not in _everything_about(caught.value)
    assert "ascii" in str(caught.value)


def test_a_password_utf8_cannot_hold_is_refused_without_showing_it() -> None:
    with pytest.raises(zsec.PasswordError) as caught:
        zsec.PasswordTable({"bob": "\ud800" + SECRET})
    assert "Sekret" not in _everything_about(caught.value)


def test_an_empty_username_is_refused_since_its_login_would_carry_an_empty_user_id() -> None:
    # Every other admission has a User-Id of 1-255 bytes; a password file
    # ignores lines with an empty name.
    with pytest.raises(zsec.PasswordError):
        zsec.PasswordTable({"": "secret"})
