"""Z85 and the fast certificate reader agree with their reference paths."""

from __future__ import annotations

import datetime
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

import zsec
from zsec import _cert, _keys

from .helpers import CLIENT_PUBLIC, CLIENT_PUBLIC_HEX

ALPHABET = _keys._ALPHABET


def test_rfc32_and_libzmq_vectors() -> None:
    assert _keys.z85_encode(bytes.fromhex("864FD26FB559F75B")) == "HelloWorld"
    assert _keys.z85_decode("HelloWorld") == bytes.fromhex("864FD26FB559F75B")
    assert _keys.z85_encode(bytes.fromhex(CLIENT_PUBLIC_HEX)) == CLIENT_PUBLIC
    assert _keys.z85_decode("%nSc0") == b"\xff\xff\xff\xff"
    assert _keys.z85_decode("%nSc1") is None  # above 0xFFFFFFFF
    assert _keys.z85_decode("0000") is None  # not a multiple of 5


@given(st.binary(min_size=0, max_size=64).filter(lambda b: len(b) % 4 == 0))
def test_z85_round_trip(data: bytes) -> None:
    assert _keys.z85_decode(_keys.z85_encode(data)) == data


_z85ish = st.text(alphabet=ALPHABET + "~ é", min_size=38, max_size=41)


@given(st.lists(st.one_of(_z85ish, st.binary(min_size=32, max_size=32).map(_keys.z85_encode))))
def test_batch_decode_matches_one_by_one(texts: list[str]) -> None:
    expected = [_keys.z85_decode(t) if len(t) == 40 else None for t in texts]
    assert _keys.z85_decode_keys(texts) == expected


_meta_line = st.tuples(
    st.sampled_from(["name", "email", "x", "name", "a-b"]),
    st.text(st.characters(exclude_characters='"\r\n', exclude_categories=["Cs"]), max_size=8),
)


@st.composite
def _cert_texts(draw: st.DrawFn) -> bytes:
    """Certificate files near the common layout, with the mutations that matter."""
    lines = [draw(st.sampled_from(["#   comment", "", "  # indented", "\t", "# x"]))]
    lines.append(draw(st.sampled_from(["metadata", "metadata  ", "meta"])))
    for name, value in draw(st.lists(_meta_line, max_size=10)):
        quote = draw(st.sampled_from(['"', '"', "'", ""]))
        lines.append(f"    {name} = {quote}{value}{quote}")
    lines.append(draw(st.sampled_from(["curve", "curve\t", " curve"])))
    key = draw(st.one_of(st.just(CLIENT_PUBLIC), _z85ish))
    lines.append(f'    public-key = "{key}"')
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(["# trailer", "", '    secret-key = "x"'])))
    eol = draw(st.sampled_from(["\n", "\n", "\r\n"]))
    return (eol.join(lines) + draw(st.sampled_from([eol, ""]))).encode()


@given(_cert_texts())
def test_fast_reader_agrees_with_the_full_reader(data: bytes) -> None:
    try:
        full: zsec.Cert | None = zsec.Cert._parse(data, "x")
    except zsec.CertificateError:
        full = None
    fields = _cert.fast_fields(data)
    if fields is None:
        return  # the full reader decides alone
    public = _keys.z85_decode(fields[0])
    if public is None:
        assert full is None
        return
    assert full is not None
    assert public == full.public_key
    meta = _cert.meta_from_block(fields[2])
    assert meta == full.metadata
    assert list(meta) == full.meta_keys()
    assert zsec.Cert.from_bytes(data).meta_keys() == full.meta_keys()


def test_fast_reader_takes_the_files_zsec_czmq_and_pyzmq_write(tmp_path: object) -> None:
    import pathlib

    import zmq.auth

    from .helpers import CZMQ_FIXTURES

    files = [p for p in (CZMQ_FIXTURES / "certs").iterdir() if not p.name.endswith("_secret")]
    cert = zsec.Cert()
    cert.set_meta("name", "zsec")
    cert.save(pathlib.Path(str(tmp_path)) / "z.key")
    pyzmq_public, _ = zmq.auth.create_certificates(str(tmp_path), "p")
    files += [pathlib.Path(str(tmp_path)) / "z.key", pathlib.Path(pyzmq_public)]
    for path in files:
        data = path.read_bytes()
        fields = _cert.fast_fields(data)
        assert fields is not None, path
        assert _cert.meta_from_block(fields[2]) == zsec.Cert._parse(data, str(path)).metadata


_GREEDY_LAYOUT = re.compile(_cert._FAST_CERT.pattern.replace("*+", "*").replace("++", "+"))


@given(_cert_texts())
def test_fast_layout_matches_what_its_greedy_form_matches(data: bytes) -> None:
    # The layout's repeats are possessive on Python 3.11+ for speed; that
    # must never change which files match or what is captured.
    text = data.decode("utf-8", "replace")
    fast, greedy = _cert._FAST_CERT.fullmatch(text), _GREEDY_LAYOUT.fullmatch(text)
    assert (fast is None) == (greedy is None)
    if fast is not None and greedy is not None:
        assert fast.groups() == greedy.groups()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("where", ["before", "after"])
def test_fast_layout_reads_many_comment_lines_without_backtracking(where: str) -> None:
    # Python 3.10 runs the greedy form: a line that two of its alternatives
    # can match doubles the work per line when the match fails, so a small
    # file of comment lines would hang whichever thread loads it.
    body = zsec.Cert()._render(False, datetime.datetime(2026, 1, 1)).decode()
    comments = "#\n" * 64
    text = comments + body + "junk\n" if where == "before" else body + comments + "junk\n"
    for layout in (_GREEDY_LAYOUT, _cert._FAST_CERT):
        assert layout.fullmatch(text) is None
        assert layout.fullmatch(text.removesuffix("junk\n")) is not None
