"""ZPL reader and writer: dialects, errors, totality and round trips."""

from __future__ import annotations

import contextlib
import re
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import zsec
from zsec import _zpl
from zsec._zpl import MAX_ZPL_BYTES, MAX_ZPL_LINES, dumps, format_value, loads

from .helpers import CZMQ_FIXTURES

KEY = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"


def test_czmq_certificate_reads_as_a_tree() -> None:
    root = loads((CZMQ_FIXTURES / "certs/bob.key_secret").read_bytes())
    assert [n.name for n in root.children] == ["metadata", "curve"]
    assert root.get("metadata/role") == "server"
    assert root.get("curve/public-key") == "aHnAf][mJWz<8B%vIHsjiq&l)w)oJmgZc{ansSJ)"
    assert root.get("curve/missing") is None
    assert root.child("metadata") is not None
    assert root.child("metadata").value is None  # type: ignore[union-attr]


def test_pyzmq_dialect_unquoted_metadata() -> None:
    text = (
        "#   ****  Generated on 2026-01-01 10:00:00.123456 by pyzmq  ****\n"
        "#   ZeroMQ CURVE **Secret** Certificate\n\n"
        "metadata\n    name = Ann Example\n    team = blue # the team\n"
        f'curve\n    public-key = "{KEY}"\n'
    )
    root = loads(text)
    assert root.get("metadata/name") == "Ann Example"
    assert root.get("metadata/team") == "blue"
    assert root.get("curve/public-key") == KEY


def test_jeromq_dialect_comment_spacing_and_key_order() -> None:
    text = (
        "# ** Generated on 2025-03-02T17:46:28+0100 by ZCert **\n"
        "#    ZeroMQ CURVE **Secret** Certificate\n\n"
        'metadata\n    version = "1"\n'
        f'curve\n    secret-key = "{KEY}"\n    public-key = "{KEY}"\n'
    )
    root = loads(text)
    assert root.get("metadata/version") == "1"
    assert root.get("curve/public-key") == KEY


@pytest.mark.parametrize("eol", ["\r\n", "\r", "\n"])
def test_line_ends(eol: str) -> None:
    text = eol.join(["# c", "metadata", '    name = "x"', "curve", f'    public-key = "{KEY}"', ""])
    root = loads(text.encode())
    assert root.get("metadata/name") == "x"
    assert root.get("curve/public-key") == KEY


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ('k = "a # not a comment"', "a # not a comment"),
        ("k = 'single # quoted'", "single # quoted"),
        ("k = 'say \"hi\"'", 'say "hi"'),
        ('k = "it\'s"  # comment', "it's"),
        ("k = a b  c   # note", "a b  c"),
        ("k = it's", "it's"),
        ("k=tight", "tight"),
        ('k\t=\t"tabbed"\t', "tabbed"),
        ("k =", ""),
        ('k = ""', ""),
        ('k = "  spaced  "', "  spaced  "),
        ('k = "Dana "DQ" Quinn"', 'Dana "DQ" Quinn'),
        ("k = caf\u00e9 \u2603", "caf\u00e9 \u2603"),
    ],
)
def test_values(line: str, value: str) -> None:
    assert loads(line).get("k") == value


def test_bare_name_is_a_section_and_comments_may_be_indented() -> None:
    root = loads("a\n    # indented comment\n  # odd comment\n    b = 1\nc # trailing\n")
    assert root.child("a").value is None  # type: ignore[union-attr]
    assert root.get("a/b") == "1"
    assert root.get("c") == ""


def test_dedent_to_any_level() -> None:
    root = loads("a\n    b\n        c = 1\nd = 2\n")
    assert root.get("a/b/c") == "1"
    assert root.get("d") == "2"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("a\n   b = 1\n", 2, "multiple of 4"),
        ("a = 1\n        b = 1\n", 2, "more than one level"),
        ("\tname = x\n", 1, "property name"),
        ('k = "a" b\n', 1, "closing"),
        ('k = "open\n', 1, "closing"),
        ("name:value\n", 1, "'='"),
        ("= value\n", 1, "property name"),
    ],
)
def test_syntax_errors_name_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(zsec.ZplError) as info:
        loads(text)
    assert info.value.line == line
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_not_utf8_is_an_error() -> None:
    with pytest.raises(zsec.ZplError, match="UTF-8"):
        loads(b"a = 1\nb = \xff\n")


def test_size_cap() -> None:
    with pytest.raises(zsec.ZplError, match="limit"):
        loads(b"#" * (MAX_ZPL_BYTES + 1))
    assert loads(b"#" * MAX_ZPL_BYTES).children == []


def test_wrong_type_is_a_type_error() -> None:
    with pytest.raises(zsec.ZsecTypeError):
        loads(42)  # type: ignore[arg-type]


@given(st.binary(max_size=2000))
def test_reader_is_total_on_bytes(data: bytes) -> None:
    try:
        root = loads(data)
    except zsec.ZplError:
        return
    assert root.name == "root"


_zpl_alphabet = st.sampled_from(
    [" ", "    ", "\n", "\r\n", "\r", "\t", "#", "=", '"', "'", "a", "key", "-", "/", "é", "\x00"]
)


@given(st.lists(_zpl_alphabet, max_size=80).map("".join))
def test_reader_is_total_on_zpl_like_text(text: str) -> None:
    with contextlib.suppress(zsec.ZplError):
        loads(text)


def _unwritable(value: str) -> bool:
    return bool(re.search(r"[\r\n]", value)) or (
        re.search(r'"[ \t]*#', value) is not None and re.search(r"'[ \t]*#", value) is not None
    )


@given(st.text(max_size=60))
def test_format_value_reads_back_or_refuses_exactly_the_unwritable(value: str) -> None:
    if _unwritable(value):
        with pytest.raises(zsec.ZplError):
            format_value(value)
        return
    assert loads(f"k = {format_value(value)}\n").get("k") == value


def test_format_value_prefers_czmq_double_quotes() -> None:
    assert format_value("plain") == '"plain"'
    assert format_value('say "hi"') == "'say \"hi\"'"
    assert format_value('it\'s "x"') == 'it\'s "x"'
    assert format_value(' it\'s "x" ') == '" it\'s "x" "'


_names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789$-_@.&+",
    min_size=1,
    max_size=12,
)
_values = st.one_of(
    st.none(),
    st.text(st.characters(exclude_characters="\r\n"), max_size=20).filter(
        lambda v: not _unwritable(v)
    ),
)


_leaves = st.builds(_zpl.ZplNode, _names, _values, st.just([]))
_trees = st.recursive(
    _leaves,
    lambda children: st.builds(_zpl.ZplNode, _names, _values, st.lists(children, max_size=3)),
    max_leaves=12,
)


@given(st.lists(_trees, max_size=4))
def test_dumps_then_loads_round_trips(children: list[_zpl.ZplNode]) -> None:
    root = _zpl.ZplNode("root", None, children)
    back = loads(dumps(root, ["   header"]))

    def shape(n: _zpl.ZplNode) -> tuple[object, ...]:
        return (n.name, n.value, tuple(shape(c) for c in n.children))

    assert shape(back) == shape(root)


def test_zpl_errors_do_not_quote_the_file() -> None:
    for text, kind in (("name%value\n", "punctuation"), ("\x07bell = 1\n", "control")):
        with pytest.raises(zsec.ZplError) as info:
            zsec._zpl.loads(text)
        assert kind in str(info.value)
        assert text[0] not in str(info.value) or text[0] == "n"


def _reference_loads(text: str) -> list[tuple[int, str, str | None]]:
    """The plain reading of a document: (depth, name, value) per property, or ZplError.

    Each quote is tried in turn, rescanning the rest of the line: quadratic,
    but obviously what the grammar says; fine for small inputs.
    """
    out: list[tuple[int, str, str | None]] = []
    depth_now = -1
    for number, line in enumerate(re.split(r"\r\n|\r|\n", text.removeprefix("\ufeff")), 1):
        body = line.lstrip(" ")
        if not body.strip(" \t") or body[0] == "#":
            continue
        indent = len(line) - len(body)
        if indent % 4 or indent // 4 > depth_now + 1:
            raise zsec.ZplError("indentation", number)
        name = re.match(r"[A-Za-z0-9$\-_@.&+/]+", body)
        if name is None:
            raise zsec.ZplError("name", number)
        rest = body[name.end() :].lstrip(" \t")
        value: str | None = None
        if rest and rest[0] == "=":
            value = rest[1:].lstrip(" \t")
            if value[:1] in ("'", '"'):
                for end in range(1, len(value) + 1):
                    if end == len(value):
                        raise zsec.ZplError("no closing quote", number)
                    tail = value[end + 1 :].lstrip(" \t")
                    if value[end] == value[0] and (not tail or tail[0] == "#"):
                        value = value[1:end]
                        break
            else:
                value = value.split("#", 1)[0].rstrip(" \t")
        elif rest and rest[0] != "#":
            raise zsec.ZplError("junk after the name", number)
        depth_now = indent // 4
        out.append((depth_now, name.group(), value))
    return out


def _flatten(node: _zpl.ZplNode, depth: int = 0) -> list[tuple[int, str, str | None]]:
    out = []
    for child in node.children:
        out.append((depth, child.name, child.value))
        out += _flatten(child, depth + 1)
    return out


_doc_alphabet = st.sampled_from(
    ['"', "'", " ", "    ", "\t", "#", "a", "b", "=", "\n", "\r\n", "\r", "é", "\x00"]
)


@given(st.lists(_doc_alphabet, max_size=60).map("".join))
def test_documents_read_as_the_plain_reference_reads_them(text: str) -> None:
    try:
        expected = _reference_loads(text)
    except zsec.ZplError as exc:
        with pytest.raises(zsec.ZplError) as caught:
            loads(text)
        assert caught.value.line == exc.line
    else:
        assert _flatten(loads(text)) == expected


@given(st.lists(st.sampled_from(['"', "'", " ", "\t", "#", "a", "=", "é"]), max_size=40))
def test_values_read_as_the_plain_reference_reads_them(parts: list[str]) -> None:
    text = "name =" + "".join(parts)
    try:
        expected = _reference_loads(text)
    except zsec.ZplError:
        with pytest.raises(zsec.ZplError, match="no closing"):
            loads(text)
    else:
        assert _flatten(loads(text)) == expected


def test_a_megabyte_certificate_of_quotes_is_still_read_exactly() -> None:
    # Issue 9, item 3: a valid certificate whose metadata value is a run of
    # quotes, at the size cap (it took 15 s to read when each quote was
    # tried with a rescan of the rest of the line).
    head, tail = 'metadata\n    name = "', f'"\ncurve\n    public-key = "{KEY}"\n'
    value = '"' * (MAX_ZPL_BYTES - len(head) - len(tail))
    data = (head + value + tail).encode()
    assert len(data) == MAX_ZPL_BYTES
    cert = zsec.Cert.from_bytes(data)
    assert cert.meta("name") == value and cert.public_txt == KEY


def _python_lines_run(text: str) -> int:
    """How many lines of zsec/_zpl.py run while parsing ``text`` (work done in Python)."""
    count = 0

    def trace(frame: Any, event: str, arg: object) -> Any:
        nonlocal count
        if frame.f_code.co_filename != _zpl.__file__:
            return None
        if event == "line":
            count += 1
        return trace

    sys.settrace(trace)
    try:
        with contextlib.suppress(zsec.ZplError):
            loads(text)
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize(
    "unit",
    ['"', "'", '" x', "' x", '"  \tx', '" #', "#", "a", " ", '"=\'#"'],
    ids=repr,
)
def test_reading_a_line_does_no_python_work_per_character(unit: str) -> None:
    # Linear time at C speed: a value a hundred times longer runs the same
    # Python lines, so no shape of line can make the reader loop per character.
    short, long = (f'name = "{unit * n}"\n' for n in (10, 1000))
    assert _python_lines_run(short) == _python_lines_run(long)


def test_line_cap() -> None:
    assert len(loads("a = b\n" * MAX_ZPL_LINES).children) == MAX_ZPL_LINES
    assert len(loads("a = b\r\n" * (MAX_ZPL_LINES - 1) + "a = b").children) == MAX_ZPL_LINES
    for text in ("a = b\n" * (MAX_ZPL_LINES + 1), "#\r" * MAX_ZPL_LINES + "a"):
        with pytest.raises(zsec.ZplError, match=f"more than {MAX_ZPL_LINES} lines"):
            loads(text)
