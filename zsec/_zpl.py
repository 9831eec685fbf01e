"""ZPL (ZMQ RFC 4) reader and writer: text -> tree -> text, with no I/O.

The reader is total: any input gives a tree or a ``ZplError``. It accepts the
dialects found in the wild (CZMQ, pyzmq's ``create_certificates``, JeroMQ,
CR or CRLF line ends, either quote character, comments at any indent) and is
a superset of CZMQ's reader: a file CZMQ accepts reads to the same values,
with one deliberate exception: in ``name = #x`` the ``#`` starts a comment, as
RFC 4 says, where CZMQ reads the value ``#x``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from ._errors import ZplError, ZsecTypeError

#: Largest document the reader accepts; a certificate is well under 1 KiB.
MAX_ZPL_BYTES = 1 << 20
#: Most lines the reader accepts (a certificate has about a dozen). Each line
#: costs a few microseconds of Python, so with this cap a document of many
#: short lines costs no more than one long line of the same size.
MAX_ZPL_LINES = 1024

_NAME = re.compile(r"[A-Za-z0-9$\-_@.&+/]+")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_WSP = " \t"
# A quote, a blank, then only blanks up to a comment (a two-character literal
# prefix, which the regex engine scans for without a try at every quote).
_CLOSING = {q: tuple(re.compile(q + blank + r"[ \t]*#") for blank in _WSP) for q in "\"'"}
# What a writer must never put inside a value: it would end the line.
_UNWRITABLE = re.compile(r"[\r\n]")


@dataclass(eq=False)
class ZplNode:
    """One property: a name, a value and ordered children.

    ``value`` is None for a bare name (a section), ``""`` for ``name =``.
    """

    name: str
    value: str | None = None
    children: list[ZplNode] = field(default_factory=list)

    def child(self, name: str) -> ZplNode | None:
        """Return the first child called ``name`` (as CZMQ's ``zconfig_locate``)."""
        for node in self.children:
            if node.name == name:
                return node
        return None

    def get(self, path: str) -> str | None:
        """Return the value at a ``/``-separated path below this node, or None."""
        node: ZplNode | None = self
        for part in path.strip("/").split("/"):
            node = node.child(part) if node is not None else None
        if node is None:
            return None
        return "" if node.value is None else node.value

    def walk(self) -> Iterator[ZplNode]:
        """Yield every node below this one, depth first, in document order."""
        for node in self.children:
            yield node
            yield from node.walk()


def loads(data: bytes | str) -> ZplNode:
    """Parse a ZPL document into a tree whose root is named ``root``.

    Raises ``ZplError`` for anything that is not ZPL (with the line number),
    for text that is not UTF-8, and for documents over ``MAX_ZPL_BYTES`` or
    ``MAX_ZPL_LINES``. Takes linear time: any document within the caps
    parses in milliseconds.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if len(raw) > MAX_ZPL_BYTES:
            raise ZplError(f"document is {len(raw)} bytes, the limit is {MAX_ZPL_BYTES}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ZplError("expected UTF-8 text", raw[: exc.start].count(b"\n") + 1) from None
    elif isinstance(data, str):
        text = data
        if len(text) > MAX_ZPL_BYTES:
            raise ZplError(f"document is {len(text)} characters, the limit is {MAX_ZPL_BYTES}")
    else:
        raise ZsecTypeError(f"ZPL input must be bytes or str, not {type(data).__name__}")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines_in = text.count("\n") + text.count("\r") - text.count("\r\n")
    lines_in += not text.endswith(("\n", "\r"))
    if lines_in > MAX_ZPL_LINES:
        raise ZplError(f"document has more than {MAX_ZPL_LINES} lines")
    lines = _LINE_BREAK.split(text) if "\r" in text else text.split("\n")

    root = ZplNode("root")
    # stack[d] is the node that a property at depth d attaches to.
    stack = [root]
    for lineno, line in enumerate(lines, 1):
        body = line.lstrip(" ")
        if not body or body[0] == "#" or (body[0] == "\t" and not body.strip(_WSP)):
            continue
        indent = len(line) - len(body)
        if indent % 4:
            raise ZplError(f"indentation must be a multiple of 4 spaces, found {indent}", lineno)
        depth = indent // 4
        if depth >= len(stack):
            raise ZplError("indented more than one level below the previous property", lineno)
        match = _NAME.match(body)
        if match is None:
            raise ZplError(f"expected a property name, found {_kind(body[0])}", lineno)
        rest = body[match.end() :].lstrip(_WSP)
        value: str | None
        if not rest or rest[0] == "#":
            value = None
        elif rest[0] == "=":
            value = _parse_value(rest[1:], lineno)
        else:
            raise ZplError(
                f"expected '=' or end of line after the name, found {_kind(rest[0])}", lineno
            )
        node = ZplNode(match.group(), value)
        del stack[depth + 1 :]
        stack[depth].children.append(node)
        stack.append(node)
    return root


def _kind(char: str) -> str:
    """Describe a character without quoting it: the file may be a secret one."""
    if char in "\t ":
        return "a tab" if char == "\t" else "a space"
    if char in "=\"'#":
        return f"'{char}'"
    if not char.isascii():
        return "a non-ASCII character"
    if not char.isprintable():
        return "a control character"
    return "a letter or digit" if char.isalnum() else "a punctuation character"


def _parse_value(text: str, lineno: int) -> str:
    text = text.lstrip(_WSP)
    if not text or text[0] not in "\"'":
        return text.split("#", 1)[0].rstrip(_WSP)
    quote = text[0]
    # The value ends at the first closing quote followed only by whitespace or
    # a comment. That is CZMQ's reading wherever CZMQ accepts the line, and it
    # also reads the values with embedded quotes that CZMQ writes but rejects.
    # Linear time, and no per-character work in Python: a closing quote is
    # followed by '#', by blanks and '#', or is the last non-blank character;
    # each is found by one C-level search (the first two for a two-character
    # prefix), so even a line made only of quotes costs no Python loop.
    ends = [text.find(quote + "#", 1)]
    for pattern in _CLOSING[quote]:
        match = pattern.search(text, 1)
        if match is not None:
            ends.append(match.start())
    last = len(text.rstrip(_WSP)) - 1
    if last >= 1 and text[last] == quote:
        ends.append(last)
    found = [end for end in ends if end >= 1]
    if not found:
        raise ZplError(f"quoted value has no closing {quote}", lineno)
    return text[1 : min(found)]


def reads_back(value: str, quote: str) -> bool:
    """Tell whether ``quote + value + quote`` parses back to exactly ``value``."""
    # A quote inside the value ends it early only when whitespace and then a
    # '#' (or the end, which here is the closing quote) follows.
    return re.search(re.escape(quote) + r"[ \t]*#", value) is None


def format_value(value: str) -> str:
    """Return ``value`` as it is written after ``name = ``, quoted so that it reads back.

    Prefers ``"value"`` (CZMQ's form), then ``'value'`` (which CZMQ also
    reads), then the unquoted form. Raises ``ZplError`` when no form reads
    back to the same value: a line break, or both quote characters each
    followed by a ``#``.
    """
    if _UNWRITABLE.search(value):
        raise ZplError("a value cannot contain a line break")
    if '"' not in value:
        return f'"{value}"'
    if "'" not in value:
        return f"'{value}'"
    if value == value.strip(_WSP) and "#" not in value and value[0] not in "\"'":
        return value
    for quote in "\"'":
        if reads_back(value, quote):
            return f"{quote}{value}{quote}"
    raise ZplError("a value cannot contain both quote characters each followed by '#'")


def dumps(root: ZplNode, header: list[str] | tuple[str, ...] = ()) -> str:
    """Serialise a tree in CZMQ's layout: ``#`` header lines, a blank line, 4-space indent.

    A node whose value is None is written as a bare name (a section such as
    ``metadata``); any other value is written ``name = <format_value(value)>``.
    Raises ``ZplError`` for a name or value that would not read back.
    """
    out = [f"#{line}\n" for line in header]
    if header:
        out.append("\n")

    def emit(node: ZplNode, pad: str) -> None:
        if not _NAME.fullmatch(node.name):
            raise ZplError(f"property name {node.name!r} is not a ZPL name")
        if node.value is None:
            out.append(f"{pad}{node.name}\n")
        else:
            out.append(f"{pad}{node.name} = {format_value(node.value)}\n")
        for child in node.children:
            emit(child, pad + "    ")

    for node in root.children:
        emit(node, "")
    return "".join(out)
