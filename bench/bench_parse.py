"""ZPL reader: worst-case parse time at the size cap, over adversarial shapes.

Run: .venv/bin/python bench/bench_parse.py [--runs N]

Each shape is a document of just under ``MAX_ZPL_BYTES`` (1 MiB) built to
hit one part of the reader: runs of quotes that are not closing quotes,
comment characters, one long line, deep indentation, many short lines.
Prints the median, the fastest and the slowest of ``--runs`` parses per
shape (on a busy machine the fastest is the best estimate of the work), and the
ratio to a bare baseline over the same bytes (decode, split into lines,
and one scan of each line), so a machine's speed cancels out. The goal is
well under 50 ms for every shape.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zsec._cert import Cert
from zsec._errors import CertificateError, ZplError
from zsec._zpl import MAX_ZPL_BYTES, MAX_ZPL_LINES, loads

CAP = MAX_ZPL_BYTES


def _fill(head: str, unit: str, tail: str = "\n") -> bytes:
    """``head`` + as many ``unit`` as fit under the cap + ``tail``."""
    room = CAP - len(head.encode()) - len(tail.encode())
    return (head + unit * (room // len(unit.encode())) + tail).encode()


def _lines(make: Callable[[int], str]) -> bytes:
    """As many lines as the line cap allows, each ``make(width)`` filling the byte cap."""
    count = MAX_ZPL_LINES - 1
    return (make(CAP // count - 1) + "\n").encode() * count


def _deep() -> bytes:
    # Each line one level deeper than the last, as deep as the cap allows.
    lines, size, depth = [], 0, 0
    while True:
        line = " " * (4 * depth) + "n\n"
        if size + len(line) > CAP:
            break
        lines.append(line)
        size += len(line)
        depth += 1
    return "".join(lines).encode()


SHAPES: dict[str, Callable[[], bytes]] = {
    # Issue 9, item 3: a valid certificate whose value is a run of quotes.
    'value of " quotes': lambda: _fill('metadata\n    name = "', '"', '"\n'),
    "value of ' quotes": lambda: _fill("metadata\n    name = '", "'", "'\n"),
    "quote, spaces, letter": lambda: _fill('name = "', '"' + " " * 30 + "x", '"\n'),
    "quote, blank, letter": lambda: _fill('name = "', '" x', '"\n'),
    "quote, spaces, #, no close": lambda: _fill('name = "', ' " #'),
    "value of # characters": lambda: _fill("name = ", "#"),
    "one long unquoted value": lambda: _fill("name = ", "a"),
    "one long name": lambda: _fill("", "n"),
    # Line-cap shapes: the most lines allowed, each as long as the byte cap allows.
    "lines of quoted quotes": lambda: _lines(lambda w: 'a = "' + '"' * (w - 5)),
    "lines of quote, blank, letter": lambda: _lines(
        lambda w: 'a = "' + '" x' * ((w - 6) // 3) + '"'
    ),
    "lines of unquoted values": lambda: _lines(lambda w: "a = " + "v" * (w - 4)),
    "lines of comments": lambda: _lines(lambda w: "#" * w),
    # Over the line cap: refused before any line is looked at.
    "too many short properties": lambda: _fill("", "a = b\n", ""),
    "too many CR line ends": lambda: _fill("", "a = b\r", ""),
    "deep indentation": _deep,
}


KEY = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"
CURVE = f'curve\n    public-key = "{KEY}"\n'


def _cert_lines(line: str, curve: str = CURVE) -> bytes:
    """A certificate with as many copies of ``line`` as the line cap allows, widened to fill
    the byte cap (inside the quotes for a value line, else by repeating its last character).
    """
    count = MAX_ZPL_LINES - 5
    width = (CAP - 100) // count
    if line.endswith('"\n'):
        line = line[:-2] + "v" * (width - len(line)) + '"\n'
    else:
        line = line[:-1] + line[-2] * (width - len(line)) + "\n"
    return ("metadata\n" + line * count + curve).encode()


# Certificates, read as the store and Cert.load read them (the fast layout
# regex first, then the full reader): the file, and files that fail
# the fast layout only at their very end.
CERTS: dict[str, Callable[[], bytes]] = {
    'metadata value of " quotes': lambda: _fill('metadata\n    name = "', '"', '"\n' + CURVE),
    "metadata value of blanks": lambda: _fill('metadata\n    name = "', " ", '"\n' + CURVE),
    "most metadata lines": lambda: _cert_lines('    n = "' + "v" * 240 + '"\n'),
    "most lines, bad key at end": lambda: _cert_lines(
        '    n = "v"\n', "curve\n    public-key = x\n"
    ),
    "most comment lines, no curve": lambda: _cert_lines("#" * 250 + "\n", ""),
    "most blank lines, no curve": lambda: _cert_lines(" " * 250 + "\n", ""),
}


def _cert(data: bytes) -> None:
    with contextlib.suppress(CertificateError):
        Cert.from_bytes(data)


def _baseline(data: bytes) -> None:
    for line in data.decode("utf-8").splitlines():
        line.find("#")


def _parse(data: bytes) -> None:
    # Some shapes are not valid ZPL: the time to say so counts as well.
    with contextlib.suppress(ZplError):
        loads(data)


def _times(fn: Callable[[bytes], None], data: bytes, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(data)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"ZPL parse at the size cap ({CAP} bytes), {args.runs} runs per shape")
    print(
        f"{'shape':36} {'bytes':>8} {'median ms':>10} {'min ms':>7} {'max ms':>8}"
        f" {'bare ms':>8} {'ratio':>6}"
    )
    worst = worst_min = 0.0
    rows = [(name, make, _parse) for name, make in SHAPES.items()]
    rows += [(f"cert: {name}", make, _cert) for name, make in CERTS.items()]
    for name, make, parse in rows:
        data = make()
        assert len(data) <= CAP, name
        times = _times(parse, data, args.runs)
        base = statistics.median(_times(_baseline, data, args.runs))
        med = statistics.median(times)
        worst, worst_min = max(worst, med), max(worst_min, min(times))
        print(
            f"{name:36} {len(data):8d} {med * 1e3:10.2f} {min(times) * 1e3:7.2f}"
            f" {max(times) * 1e3:8.2f}"
            f" {base * 1e3:8.2f} {med / base:6.1f}"
        )
    print(
        f"worst median: {worst * 1e3:.2f} ms, worst fastest run: {worst_min * 1e3:.2f} ms"
        " (goal: well under 50 ms)"
    )


if __name__ == "__main__":
    main()
