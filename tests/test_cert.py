"""Cert: CZMQ fixtures, pyzmq interop, keys, metadata, files, sockets."""

from __future__ import annotations

import copy
import datetime
import json
import os
import pickle
import re
import shutil
import stat
from pathlib import Path

import pytest
import zmq
import zmq.auth
from hypothesis import given
from hypothesis import strategies as st

import zsec
from zsec import _files

from .helpers import (
    CLIENT_PUBLIC,
    CLIENT_PUBLIC_HEX,
    CLIENT_SECRET,
    CZMQ_FIXTURES,
    SERVER_PUBLIC,
    SERVER_SECRET,
)

MANIFEST = json.loads((CZMQ_FIXTURES / "manifest.json").read_text())
LOADABLE = [f for f in MANIFEST["files"] if f["loadable"]]


# -- the CZMQ fixtures ----------------------------------------------------


@pytest.mark.parametrize("entry", LOADABLE, ids=lambda e: e["file"])
def test_czmq_file_alone_loads_as_czmq_reads_it(entry: dict, tmp_path: Path) -> None:
    alone = tmp_path / Path(entry["file"]).name
    shutil.copy(CZMQ_FIXTURES / entry["file"], alone)
    cert = zsec.Cert.load(alone)
    assert cert.public_txt == entry["public_key"]
    assert cert.secret_txt == entry["secret_key"]
    assert cert.metadata == entry["metadata"]
    assert cert.meta_keys() == entry["metadata_keys_order"]


def _copy_pair(public: Path, directory: Path) -> Path:
    """Copy a certificate and its secret file with the modes CZMQ gives them.

    A checkout made under umask 002 leaves the fixtures group-writable,
    which ``Cert.load`` refuses for a secret file.
    """
    directory.mkdir(exist_ok=True)
    copy = directory / public.name
    shutil.copy(public, copy)
    shutil.copy(f"{public}_secret", f"{copy}_secret")
    copy.chmod(0o644)
    Path(f"{copy}_secret").chmod(0o600)
    return copy


@pytest.mark.parametrize(
    "entry", [e for e in LOADABLE if "in_place_secret_key" in e], ids=lambda e: e["file"]
)
def test_czmq_public_path_reads_the_secret_file_beside_it(entry: dict, tmp_path: Path) -> None:
    cert = zsec.Cert.load(_copy_pair(CZMQ_FIXTURES / entry["file"], tmp_path))
    assert cert.public_txt == entry["public_key"]
    assert cert.secret_txt == entry["in_place_secret_key"]
    assert cert.metadata == entry["metadata"]


@pytest.mark.parametrize("name", ["double-quote.key", "double-quote.key_secret"])
def test_double_quote_cert_that_czmq_cannot_load_loads_in_zsec(name: str, tmp_path: Path) -> None:
    entry = next(e for e in MANIFEST["files"] if e["file"].endswith("/" + name))
    assert entry["loadable"] is False  # CZMQ's own verdict
    shutil.copy(CZMQ_FIXTURES / "certs_unloadable" / name, tmp_path / name)
    cert = zsec.Cert.load(tmp_path / name)
    assert cert.meta("name") == 'Dana "DQ" Quinn'
    assert cert.meta("email") == "dq@example.org"
    assert cert.public_txt == ")FV7o(uWG.K^X8HCh-eEaEihZo2U8wrX)Rtm.]6S"
    assert (cert.secret_key is not None) == name.endswith("_secret")


@pytest.mark.parametrize("stem", ["alice.key", "bob.key", "tricky.key"])
def test_writer_reproduces_czmq_layout_byte_for_byte(stem: str, tmp_path: Path) -> None:
    for suffix in ("", "_secret"):
        original = (CZMQ_FIXTURES / "certs" / (stem + suffix)).read_text()
        stamp = re.search(r"Generated on (\S+ \S+) by CZMQ", original)
        assert stamp is not None
        now = datetime.datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S")
        cert = zsec.Cert.load(_copy_pair(CZMQ_FIXTURES / "certs" / stem, tmp_path / "in"))
        cert.save(tmp_path / stem, now=now)
        written = (tmp_path / (stem + suffix)).read_text()
        assert written == original.replace("by CZMQ", "by zsec")


# -- pyzmq interop ----------------------------------------------------------


def test_pyzmq_certificates_load_in_zsec(tmp_path: Path) -> None:
    public_file, secret_file = zmq.auth.create_certificates(
        str(tmp_path), "server", metadata={"name": "Srv One", "role": "hub # main"}
    )
    pub, sec = zmq.auth.load_certificate(secret_file)
    # pyzmq leaves the secret file to the umask: under umask 002 it would be
    # group-writable, which Cert.load refuses (with "fix: chmod go-w").
    os.chmod(secret_file, 0o600)
    cert = zsec.Cert.load(public_file)  # reads server.key_secret beside it
    assert cert.public_txt.encode() == pub
    assert cert.secret_txt is not None and cert.secret_txt.encode() == sec
    assert cert.meta("name") == "Srv One"
    assert cert.meta("role") == "hub"  # pyzmq writes it unquoted, so '#' starts a comment
    os.unlink(secret_file)
    public_only = zsec.Cert.load(public_file)
    assert public_only.public_key == cert.public_key
    assert public_only.secret_key is None


def test_zsec_certificates_load_in_pyzmq(tmp_path: Path) -> None:
    cert = zsec.Cert()
    cert.set_meta("name", '  O\'Brien "x" # = ; \u00e9 ')
    cert.set_meta("email", "o@example.org")
    cert.save(tmp_path / "c.key")
    pub, sec = zmq.auth.load_certificate(str(tmp_path / "c.key_secret"))
    assert zsec.Cert.from_keys(pub, sec) == cert
    pub_only, none = zmq.auth.load_certificate(str(tmp_path / "c.key"))
    assert pub_only == cert.public_txt.encode() and none is None
    assert zmq.auth.load_certificates(str(tmp_path)) == {cert.public_txt.encode(): True}


# -- keys -------------------------------------------------------------------


def test_fresh_cert_has_a_matching_keypair() -> None:
    cert = zsec.Cert()
    assert len(cert.public_key) == 32 and cert.secret_key is not None
    assert zmq.curve_public(cert.secret_txt.encode()) == cert.public_txt.encode()  # type: ignore[union-attr]
    assert zsec.Cert() != cert


def test_from_keys_accepts_raw_and_z85_in_any_form() -> None:
    raw = bytes.fromhex(CLIENT_PUBLIC_HEX)
    for public in (raw, CLIENT_PUBLIC, CLIENT_PUBLIC.encode(), bytearray(raw), memoryview(raw)):
        cert = zsec.Cert.from_keys(public, CLIENT_SECRET)
        assert cert.public_key == raw
        assert cert.public_txt == CLIENT_PUBLIC
        assert cert.secret_txt == CLIENT_SECRET
    assert zsec.Cert.from_keys(SERVER_PUBLIC).secret_key is None


@pytest.mark.parametrize(
    ("value", "error", "fragment"),
    [
        (b"\x01" * 31, zsec.KeyFormatError, "32 raw bytes or 40 Z85 characters, got 31 bytes"),
        ("A" * 41, zsec.KeyFormatError, "40 Z85 characters (or 32 raw bytes), got 41"),
        ("#" * 40, zsec.KeyFormatError, "not valid Z85"),  # group above 0xFFFFFFFF
        ("~" * 40, zsec.KeyFormatError, "not valid Z85"),  # not in the alphabet
        (b"\xff" * 40, zsec.KeyFormatError, "not valid Z85"),
        (12345, zsec.ZsecTypeError, "bytes (32 raw) or str (40 Z85 characters)"),
        (None, zsec.ZsecTypeError, "not NoneType"),
    ],
)
def test_from_keys_rejects_bad_shapes(value: object, error: type, fragment: str) -> None:
    with pytest.raises(error) as info:
        zsec.Cert.from_keys(value)  # type: ignore[arg-type]
    assert fragment in str(info.value)
    assert isinstance(info.value, zsec.ZsecError)
    assert isinstance(info.value, ValueError if error is zsec.KeyFormatError else TypeError)


def test_from_keys_rejects_a_secret_of_another_key_without_showing_it() -> None:
    with pytest.raises(zsec.KeyFormatError, match="does not belong") as info:
        zsec.Cert.from_keys(CLIENT_PUBLIC, SERVER_SECRET)
    assert SERVER_SECRET not in str(info.value)


# -- loading errors ---------------------------------------------------------


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(zsec.FileAccessError) as info:
        zsec.Cert.load(tmp_path / "nope.key")
    assert isinstance(info.value, OSError)
    assert "nope.key" in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("metadata\n", "'curve' section with a 'public-key'"),
        ('curve\n    public-key = "short"\n', "40 Z85 characters"),
        (
            f'curve\n    public-key = "{CLIENT_PUBLIC}"\n    secret-key = "xx"\n',
            "secret-key must be",
        ),
        (
            f'curve\n    public-key = "{CLIENT_PUBLIC}"\n    secret-key = "{SERVER_SECRET}"\n',
            "does not match",
        ),
        ("curve\n   public-key = 1\n", "not a valid certificate file: line 2"),
    ],
)
def test_load_invalid_content(text: str, fragment: str, tmp_path: Path) -> None:
    (tmp_path / "bad.key").write_text(text)
    with pytest.raises(zsec.CertificateError) as info:
        zsec.Cert.load(tmp_path / "bad.key")
    assert fragment in str(info.value)
    assert "bad.key" in str(info.value)
    assert SERVER_SECRET not in str(info.value)


def test_load_refuses_huge_files(tmp_path: Path) -> None:
    (tmp_path / "big.key").write_bytes(b"#" * (zsec._cert.MAX_CERT_BYTES + 1))
    with pytest.raises(zsec.FileAccessError, match="larger than"):
        zsec.Cert.load(tmp_path / "big.key")


def test_load_bad_path_type() -> None:
    with pytest.raises(zsec.ZsecTypeError):
        zsec.Cert.load(3.5)


def test_czmq_all_zero_secret_means_public_only(tmp_path: Path) -> None:
    (tmp_path / "z.key").write_text(
        f'curve\n    public-key = "{CLIENT_PUBLIC}"\n    secret-key = "{"0" * 40}"\n'
    )
    assert zsec.Cert.load(tmp_path / "z.key").secret_key is None


def test_duplicate_metadata_name_first_wins_as_in_czmq(tmp_path: Path) -> None:
    (tmp_path / "d.key").write_text(
        f'metadata\n    a = "1"\n    a = "2"\ncurve\n    public-key = "{CLIENT_PUBLIC}"\n'
    )
    assert zsec.Cert.load(tmp_path / "d.key").meta("a") == "1"


# -- metadata -----------------------------------------------------------------


def test_metadata_api() -> None:
    cert = zsec.Cert()
    cert.set_meta("name", "first")
    cert.set_meta("email", "e@x")
    cert.set_meta("name", "second")  # overwrites, unlike CZMQ
    assert cert.meta("name") == "second"
    assert cert.meta_keys() == ["name", "email"]
    cert.unset_meta("name")
    cert.unset_meta("never-set")
    assert cert.meta("name") is None
    assert cert.metadata == {"email": "e@x"}
    cert.metadata["email"] = "changed"
    assert cert.meta("email") == "e@x"


def test_a_change_made_while_another_thread_first_reads_the_metadata_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A certificate read from a file may keep its metadata as text until
    # first asked for. Its owner may change it on one thread while another
    # reads it: the reader must never put back a copy made before the change.
    import threading

    from zsec import _cert

    source = zsec.Cert()
    source.set_meta("name", "alice")
    cert = zsec.Cert.from_bytes(source._render(False, datetime.datetime(2026, 1, 1)))
    real = _cert.meta_from_block
    changed: list[bool] = []
    interrupted: list[bool] = []

    def change() -> None:
        cert.set_meta("role", "admin")
        changed.append(True)

    def preempted(block: str) -> dict[str, str]:
        # The reader is interrupted here, while it turns the text into a dict.
        if not interrupted:
            interrupted.append(True)
            writer = threading.Thread(target=change)
            writer.start()
            writer.join(timeout=10)
        return real(block)

    monkeypatch.setattr(_cert, "meta_from_block", preempted)
    assert cert.meta("name") == "alice"
    if not changed:
        change()  # the first read converted nothing: there was no window to change in
    assert cert.metadata == {"name": "alice", "role": "admin"}


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("", "v", zsec.MetadataError),
        ("has space", "v", zsec.MetadataError),
        ("/lead", "v", zsec.MetadataError),
        ("trail/", "v", zsec.MetadataError),
        ("x" * 256, "v", zsec.MetadataError),
        ("public-key-2", "v", zsec.MetadataError),
        ("ok", "line\nbreak", zsec.MetadataError),
        ("ok", "nul\x00", zsec.MetadataError),
        ("ok", "both \" # and ' # quotes", zsec.MetadataError),
        (1, "v", zsec.ZsecTypeError),
        ("ok", b"bytes", zsec.ZsecTypeError),
    ],
)
def test_metadata_rejects_what_cannot_be_stored(name: object, value: object, error: type) -> None:
    cert = zsec.Cert()
    with pytest.raises(error):
        cert.set_meta(name, value)  # type: ignore[arg-type]
    assert cert.meta_keys() == []


_meta_names = st.from_regex(
    r"[A-Za-z0-9$\-_@.&+][A-Za-z0-9$\-_@.&+/]{0,10}[A-Za-z0-9]", fullmatch=True
)
_meta_values = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)


@given(st.lists(st.tuples(_meta_names, _meta_values), max_size=6))
def test_metadata_round_trips_through_files(pairs: list[tuple[str, str]]) -> None:
    import tempfile

    cert = zsec.Cert()
    expected: dict[str, str] = {}
    for name, value in pairs:
        try:
            cert.set_meta(name, value)
        except zsec.MetadataError as exc:
            # The only refusals: control characters, reserved names, and the
            # one quoting that no ZPL form can hold.
            assert (
                re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value)
                or name.startswith(("public-key", "secret-key"))
                or (re.search(r'"[ \t]*#', value) and re.search(r"'[ \t]*#", value))
            ), exc
            continue
        expected[name] = value
    with tempfile.TemporaryDirectory() as tmp:
        cert.save(os.path.join(tmp, "c.key"))
        for path in ("c.key", "c.key_secret"):
            back = zsec.Cert.from_bytes(Path(tmp, path).read_bytes())
            assert back.metadata == expected
            assert back.meta_keys() == list(expected)
    assert cert.metadata == expected


def _czmq_reads(line: str) -> str | None:
    """A model of CZMQ's zconfig value reader (research: first closing quote, strict)."""
    text = line.split("=", 1)[1].lstrip(" \t")
    if text[:1] in ("'", '"'):
        end = text.find(text[0], 1)
        if end < 0 or text[end + 1 :].strip(" \t")[:1] not in ("", "#"):
            return None
        return text[1:end]
    return text.split("#", 1)[0].rstrip(" \t")


@given(_meta_values)
def test_values_czmq_can_read_are_written_in_a_form_czmq_reads(value: str) -> None:
    try:
        formatted = zsec._zpl.format_value(value)
    except zsec.ZplError:
        return
    czmq_can_hold = (
        '"' not in value
        or "'" not in value
        or (value.strip(" \t") == value and "#" not in value and value[:1] not in "\"'")
    )
    if czmq_can_hold:
        assert _czmq_reads(f"    k = {formatted}") == value


# -- files ------------------------------------------------------------------


def test_save_modes_and_no_temp_files(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        zsec.Cert().save(tmp_path / "c.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "c.key").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.key", "c.key_secret"]


def test_secret_file_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        zsec.Cert().save_secret(tmp_path / "s")
        zsec.Cert().save_public(tmp_path / "p")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o600
    # Public files are never group/other writable, or a strict store refuses them.
    assert stat.S_IMODE((tmp_path / "p").stat().st_mode) == 0o644


def test_replacing_a_file_keeps_the_old_one_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = zsec.Cert()
    first.save(tmp_path / "c.key")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_files.os, "fsync", broken_fsync)
    with pytest.raises(zsec.FileAccessError, match="No space left") as info:
        zsec.Cert().save(tmp_path / "c.key")
    assert isinstance(info.value, OSError) and info.value.errno == 28
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert zsec.Cert.load(tmp_path / "c.key") == first


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        zsec.Cert().save(tmp_path / "c.key")
    assert list(tmp_path.iterdir()) == []


def test_save_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(zsec.FileAccessError, match="No such file"):
        zsec.Cert().save(tmp_path / "missing" / "c.key")


def test_public_only_cert_cannot_save_a_secret(tmp_path: Path) -> None:
    public = zsec.Cert.from_keys(CLIENT_PUBLIC)
    with pytest.raises(zsec.CertificateError, match="no secret key"):
        public.save(tmp_path / "c.key")
    assert list(tmp_path.iterdir()) == []
    public.save_public(tmp_path / "c.key")
    assert zsec.Cert.load(tmp_path / "c.key") == public


def test_save_secret_alone_holds_both_keys(tmp_path: Path) -> None:
    cert = zsec.Cert()
    cert.save_secret(tmp_path / "only_secret")
    assert zsec.Cert.load(tmp_path / "only_secret") == cert


# -- value behaviour ----------------------------------------------------------


def test_repr_and_str_hide_the_secret() -> None:
    cert = zsec.Cert.from_keys(CLIENT_PUBLIC, CLIENT_SECRET)
    cert.set_meta("name", "n")
    for text in (repr(cert), str(cert), f"{cert}"):
        assert CLIENT_SECRET not in text
        assert "[secure]" in text
        assert CLIENT_PUBLIC in text


def test_equality_hash_and_dup() -> None:
    full = zsec.Cert.from_keys(CLIENT_PUBLIC, CLIENT_SECRET)
    public = zsec.Cert.from_keys(CLIENT_PUBLIC)
    assert full == zsec.Cert.from_keys(CLIENT_PUBLIC, CLIENT_SECRET)
    assert full != public
    assert full != CLIENT_PUBLIC
    assert hash(full) == hash(public)
    twin = full.dup()
    twin.set_meta("name", "twin")
    assert full.meta("name") is None
    assert twin == full  # metadata does not take part, as in CZMQ
    assert copy.deepcopy(full) == full


def test_cert_cannot_be_pickled() -> None:
    with pytest.raises(zsec.ZsecTypeError):
        pickle.dumps(zsec.Cert())


def test_apply_sets_curve_keys_that_complete_a_handshake() -> None:
    ctx = zmq.Context()
    try:
        server, client = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        for sock in (server, client):
            sock.linger = 0
        server.rcvtimeo = 5000
        server_cert = zsec.Cert.from_keys(SERVER_PUBLIC, SERVER_SECRET)
        server_cert.apply(server)
        server.curve_server = True
        port = server.bind_to_random_port("tcp://127.0.0.1")
        zsec.Cert.from_keys(CLIENT_PUBLIC, CLIENT_SECRET).apply(client)
        client.curve_serverkey = SERVER_PUBLIC.encode()
        client.connect(f"tcp://127.0.0.1:{port}")
        client.send(b"hello")
        assert server.recv() == b"hello"
        with pytest.raises(zsec.CertificateError):
            zsec.Cert.from_keys(CLIENT_PUBLIC).apply(client)
        with pytest.raises(zsec.ZsecTypeError):
            server_cert.apply("not a socket")
    finally:
        ctx.destroy(linger=0)


# -- the secret file beside a public one ------------------------------------


def test_load_refuses_a_secret_file_that_holds_another_key_than_its_public_file(
    tmp_path: Path,
) -> None:
    # Whoever can create <path>_secret (a shared or careless directory) would
    # otherwise swap in a keypair they know for the server's own.
    mine, planted = zsec.Cert(), zsec.Cert()
    mine.save_public(tmp_path / "server.key")
    planted.save_secret(tmp_path / "server.key_secret")
    with pytest.raises(zsec.CertificateError) as info:
        zsec.Cert.load(tmp_path / "server.key")
    assert "server.key_secret" in str(info.value)
    assert planted.secret_txt not in str(info.value)
    mine.save(tmp_path / "server.key")  # the pair belongs together again
    assert zsec.Cert.load(tmp_path / "server.key") == mine


def test_load_refuses_a_secret_file_others_can_write(tmp_path: Path) -> None:
    cert = zsec.Cert()
    cert.save(tmp_path / "server.key")
    secret = tmp_path / "server.key_secret"
    secret.chmod(0o666)
    with pytest.raises(zsec.FileAccessError, match="chmod go-w"):
        zsec.Cert.load(tmp_path / "server.key")
    secret.chmod(0o600)
    assert zsec.Cert.load(tmp_path / "server.key") == cert


def test_load_reads_a_secret_file_alone_when_there_is_no_public_file(tmp_path: Path) -> None:
    cert = zsec.Cert()
    cert.save_secret(tmp_path / "only.key_secret")
    assert zsec.Cert.load(tmp_path / "only.key") == cert
