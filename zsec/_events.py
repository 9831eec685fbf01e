"""Decision and trust-change events: the hub, the logging sink, the audit log and metrics.

The ZAP thread hands each decision to ``EventHub.post`` as a cheap tuple (two
clock reads, a dict lookup and a deque append). The rest is done in batches:
building the immutable events and their audit lines, counting metrics and
handing the batch to each subscriber's own queue and thread is bounded work
of zsec's own, done by the hub's dispatcher thread, or under load by the ZAP
thread itself once a batch is full (one thread doing it costs the GIL less
than two taking turns); writing the audit log and logging, which can block
or run application code, only ever happen in the dispatcher thread.
Every queue is bounded: when one is full the event is dropped and counted,
never waited for, so a slow, blocking or raising subscriber or log handler
cannot slow or stop authentication. Drops are logged once per interval and
counted in ``zsec_events_dropped_total``.

No event carries a password or a secret key: a decision names the PLAIN
username and the CURVE client's public key, never the password.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import itertools
import json
import logging
import operator
import os
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ._errors import AuthError, ZsecTypeError
from ._files import fspath
from ._keys import z85_encode

if TYPE_CHECKING:
    from ._cert import Cert
    from ._guard import Cut
    from ._index import StoreChange
    from ._store import CertStore
    from ._throttle import FailureLimiter
    from ._zap import Policy, ZapReply, ZapRequest

log = logging.getLogger("zsec.auth")
trust_log = logging.getLogger("zsec.trust")

#: Events waiting for the dispatcher, and for each subscriber, before new ones are dropped.
QUEUE_LIMIT = 65_536
#: At most one "events dropped" warning per this many seconds (per queue).
DROP_REPORT_SECONDS = 10.0
# After a busy batch the dispatcher pauses this long so that the next batch
# is bigger: fewer wake-ups, less GIL traffic with the ZAP thread. (Under
# load, events reach the audit log and subscribers up to this much later.)
_BATCH_PAUSE = 0.01
_IDLE_WAKE = 1.0
# Once this many events wait, the ZAP thread builds them itself (EventHub.post):
# 0.4-1.2 ms of work in one go (measured), a hand-off to the dispatcher per
# batch. Bigger batches measured worse: they fill slower than the dispatcher's
# pause, so it takes to building them again.
_INLINE_BATCH = 256
#: How often the dispatcher looks whether each store's directory still exists.
STORE_CHECK_SECONDS = 1.0

# Reasons the policy gives, as short stable codes (metrics labels, audit).
_REASON_CODES = {
    "OK": "ok",
    "address banned after repeated failures": "banned",
    "unknown user": "unknown-user",
    "wrong password": "wrong-password",
    "unknown CURVE key": "unknown-key",
    "address not in the allow list": "not-allowed",
    "address is in the deny list": "denied",
    "no PLAIN passwords for this domain": "not-configured",
    "no CURVE configuration for this domain": "not-configured",
    "password file unavailable": "passwords-unavailable",
    "internal error": "internal-error",
    "authenticator stopping": "stopping",
}


def reason_code(reason: str, status: int) -> str:
    """The stable short code of a decision's reason ("ok", "wrong-password", "malformed"...)."""
    code = _REASON_CODES.get(reason)
    if code is not None:
        return code
    return "malformed" if status == 400 else "other"


# The events thread's caches of derived text: small, since under hostile
# traffic (random addresses, keys, names) every entry is new.
_CACHE_LIMIT = 1024
# Slots kept (see _Raw) per hub, under 1 KB each (a request's fields, their
# text and JSON). Only allowed decisions keep one, so these are clients that
# got in: a server with 1,000 CURVE clients spent 4.0 us per event instead of
# 2.2 us when this was 512. More distinct allowed shapes than this only cost
# each decision the slower build. A full set is dropped for a new one at
# most once per _SLOT_RENEWAL seconds.
_SLOT_LIMIT = 2048
_SLOT_RENEWAL = 60.0
_TEXTS: dict[bytes, str] = {}


def _text(value: bytes) -> str:
    """Peer-supplied bytes as text: lossless, never failing (JSON and logs escape the rest)."""
    # Domains and addresses repeat: remember their text (bounded).
    text = _TEXTS.get(value)
    if text is None:
        text = value.decode("utf-8", "backslashreplace")
        if len(_TEXTS) >= _CACHE_LIMIT:
            _TEXTS.clear()
        _TEXTS[value] = text
    return text


_SECOND: tuple[int, str] = (-1, "")


def _iso(when: float) -> str:
    """ISO 8601 UTC with microseconds; the date part is made once per second."""
    global _SECOND
    whole = int(when)
    cached = _SECOND
    if cached[0] != whole:
        stamp = datetime.datetime.fromtimestamp(whole, datetime.timezone.utc)
        cached = _SECOND = (whole, stamp.strftime("%Y-%m-%dT%H:%M:%S"))
    return "%s.%06dZ" % (cached[1], (when - whole) * 1e6)  # noqa: UP031 - the fastest form


class Decision(NamedTuple):
    """One ZAP decision, immutable. Never holds a password or a secret key.

    ``time`` is wall-clock seconds since the epoch; ``verdict`` is
    ``"allowed"`` (status 200), ``"refused"`` (300/400) or ``"error"`` (500);
    ``reason`` is the ZAP status text and ``reason_code`` its stable short
    form; ``latency`` is the seconds from receiving the request to having the
    reply. ``username`` is set for PLAIN, ``key`` (the client's Z85 public
    key) for CURVE, ``cert_name`` when a trusted certificate with a ``name``
    metadata entry matched. A malformed request has ``mechanism`` as sent
    (possibly empty) and reason code ``"malformed"``.
    """

    time: float
    mechanism: str
    domain: str
    address: str
    username: str | None
    key: str | None
    cert_name: str | None
    verdict: str
    status: int
    reason: str
    reason_code: str
    latency: float

    @property
    def kind(self) -> str:
        """``"decision"``."""
        return "decision"

    @property
    def allowed(self) -> bool:
        return self.status == 200

    def to_dict(self) -> dict[str, Any]:
        """The audit-log object: ``event``, ``time`` as ISO 8601 UTC, then every field."""
        out: dict[str, Any] = {"event": "decision", **self._asdict()}
        out["time"] = _iso(self.time)
        out["latency"] = round(self.latency, 7)
        return out


class TrustChange(NamedTuple):
    """A change to what is trusted, immutable. Never holds a secret key.

    ``action`` is one of ``key-added``, ``key-revoked``, ``key-updated``
    (a trusted key's certificate metadata changed), ``store-unavailable``,
    ``store-ready``, ``ban-started``, ``ban-ended``, ``session-cut``.
    ``store`` is the store's directory (``"memory"`` for an in-memory
    store), ``domain`` the ZAP domain it serves, ``source`` the file the
    key came from when known, ``address`` the banned address, ``duration``
    a ban's length in seconds.
    """

    time: float
    action: str
    domain: str | None = None
    store: str | None = None
    key: str | None = None
    cert_name: str | None = None
    source: str | None = None
    address: str | None = None
    duration: float | None = None
    reason: str = ""

    @property
    def kind(self) -> str:
        """``"trust"``."""
        return "trust"

    def to_dict(self) -> dict[str, Any]:
        """The audit-log object: ``event``, ``time`` as ISO 8601 UTC, then every field."""
        out: dict[str, Any] = {"event": "trust", **self._asdict()}
        out["time"] = _iso(self.time)
        return out


Event = Decision | TrustChange

# What the ZAP thread posts: (t0, t1, slot, cert or None), perf_counter
# times (the wall clock is derived later). A slot is a list for one shape,
# [shape, cert, fields, audit JSON, metric labels]: the shape is what the
# event's other fields are made of, (mechanism, domain, address, the first
# credential in a tuple (username or CURVE key; never the PLAIN password),
# status code, status text); the builder fills in the rest, made with that
# cert.
# The hub keeps the slots of allowed decisions; a refusal's is used once.
# For a malformed request: (t0, t1, None, (status code, status text, frames)).
_Raw = tuple[float, float, "list[Any] | None", Any]
# A built batch: its events, their audit lines (None: no audit log when it
# was built), the notable ones (see build_decisions) and the flush markers.
_Built = tuple[list["Event"], "list[bytes] | None", list["Event"], list[threading.Event]]


def _cert_name(cert: Cert | None) -> str | None:
    if cert is None:
        return None
    return cert.meta("name")


_ANCHOR_SPREAD = 50e-6


class _Anchor:
    """Turns perf_counter readings into wall-clock times, re-anchored per batch."""

    __slots__ = ("perf", "wall")

    def __init__(self) -> None:
        # A thread switch between the two clocks' reads would shift every
        # time of the batch by its length: read perf_counter on both sides,
        # and again if they are far apart.
        for _ in range(3):
            before = time.perf_counter()
            wall = time.time()
            after = time.perf_counter()
            if after - before < _ANCHOR_SPREAD:
                break
        self.wall = wall
        self.perf = (before + after) / 2

    def at(self, perf: float) -> float:
        return self.wall - (self.perf - perf)


# NamedTuple's generated __new__ is a Python call; this is the same result, cheaper.
_new_decision: Callable[[type[Decision], tuple[Any, ...]], Decision] = tuple.__new__
_OUTCOMES: dict[tuple[bytes, bytes], tuple[int, str, str, str]] = {}
_Z85: dict[bytes, str] = {}


def _outcome(code: bytes, text: bytes) -> tuple[int, str, str, str]:
    """(status, verdict, reason, reason code) of a reply; a handful of distinct values."""
    found = _OUTCOMES.get((code, text))
    if found is None:
        reason = text.decode("utf-8", "replace")
        try:
            status = int(code)
        except ValueError:
            status = 500
        verdict = "allowed" if status == 200 else "error" if status == 500 else "refused"
        found = (status, verdict, reason, reason_code(reason, status))
        # Only the policy's own reasons: a malformed request's text varies.
        if reason in _REASON_CODES:
            _OUTCOMES[code, text] = found
    return found


def _z85(key: bytes) -> str:
    text = _Z85.get(key)
    if text is None:
        text = z85_encode(key)
        if len(_Z85) >= _CACHE_LIMIT:
            _Z85.clear()
        _Z85[key] = text
    return text


def build_decision(raw: _Raw, anchor: _Anchor) -> Decision:
    """Make the immutable event from what the ZAP thread posted."""
    t0, t1, slot, extra = raw
    username = key = cert_name = None
    if slot is not None:
        raw_mechanism, raw_domain, raw_address, credentials, status_code, status_text = slot[0]
        mechanism = _text(raw_mechanism)
        domain, address = _text(raw_domain), _text(raw_address)
        if mechanism == "CURVE":
            key = _z85(credentials[0])
        elif mechanism == "PLAIN":
            username = _text(credentials[0])
        cert_name = _cert_name(extra)
    else:
        # A malformed request: what can be read of it, never the credentials.
        status_code, status_text, frames = extra
        fields = ["", "", ""]
        if frames is not None:
            start = 0
            with contextlib.suppress(ValueError):
                start = frames.index(b"", 1) + 1 if len(frames) > 1 else 0
            for i, at in enumerate((start + 5, start + 2, start + 3)):
                if start and len(frames) > at:
                    fields[i] = _text(frames[at][:255])
        mechanism, domain, address = fields
    status, verdict, reason, code = _outcome(status_code, status_text)
    return _new_decision(
        Decision,
        (
            anchor.wall - (anchor.perf - t0),
            mechanism,
            domain,
            address,
            username,
            key,
            cert_name,
            verdict,
            status,
            reason,
            code,
            t1 - t0,
        ),
    )


def build_decisions(
    batch: Iterable[Any],
    anchor: _Anchor,
    markers: list[Any],
    lines: list[bytes] | None = None,
    notable: list[Event] | None = None,
    labels: list[tuple[str, str, str, str]] | None = None,
) -> list[Event]:
    """The events of a dispatcher batch, in order: raw decisions built, ready events as they are.

    Anything else in the batch (a flush marker) goes to ``markers``. With
    ``lines``, each event's ``audit_line`` is appended to it too; with
    ``notable``, every event that is not an allowed decision (what is
    logged by default), so that logging need not look at the rest. The
    decisions are the same as ``build_decision`` makes: the fields that do
    not vary per request, and their JSON, are made once per slot (see
    ``_Raw``), so only the time and the latency are new. A certificate whose
    metadata changed is a new object, so fields made with another one are
    made again. With ``labels``, each decision's metric labels (see
    ``_labels``) are appended to it, one per decision in order.
    """
    offset = anchor.wall - anchor.perf
    out: list[Event] = []
    append = out.append
    line = _DECISION_LINE
    # One read: another hub's events thread may replace it between two.
    whole, stamp = _SECOND_BYTES
    for raw in batch:
        if type(raw) is not tuple:
            if isinstance(raw, threading.Event):
                markers.append(raw)
                continue
            append(raw)
            if lines is not None:
                lines.append(audit_line(raw))
            if type(raw) is Decision:
                if labels is not None:
                    # Not shared: whatever a publisher put in it, making these
                    # cannot fail, only counting them can (that costs only
                    # the metrics).
                    labels.append(_DECISION_LABELS(raw))
                if notable is not None and raw.status != 200:
                    notable.append(raw)
            elif notable is not None:
                notable.append(raw)
            continue
        t0, t1, slot, cert = raw
        if slot is None:
            event = build_decision(raw, anchor)
            append(event)
            if labels is not None:  # a peer's garbage: not worth sharing
                labels.append(_DECISION_LABELS(event))
            if lines is not None:
                lines.append(audit_line(event))
            if notable is not None and event.status != 200:
                notable.append(event)
            continue
        fields = slot[2]
        if fields is None or slot[1] is not cert:
            fields = build_decision(raw, anchor)[1:11]
            slot[1:] = cert, fields, None, None
        when = offset + t0
        latency = t1 - t0
        # Unpacked into one tuple display: a starred one builds a list first.
        mechanism, domain, address, username, key, name, verdict, status, reason, code = fields
        event = _new_decision(
            Decision,
            (
                when,
                mechanism,
                domain,
                address,
                username,
                key,
                name,
                verdict,
                status,
                reason,
                code,
                latency,
            ),
        )
        append(event)
        if labels is not None:
            label = slot[4]
            if label is None:  # made when first needed, as the audit JSON is
                label = slot[4] = _labels(fields)
            labels.append(label)
        # From the event itself, not from whether its slot was filled just
        # now: that a refusal's slot is used once is post()'s habit, not a
        # rule of this function.
        if status != 200 and notable is not None:
            notable.append(event)
        if lines is not None:
            since = when - whole
            if not 0.0 <= since < 1.0:
                whole, stamp = _second_bytes(int(when))
                since = when - whole
            middle = slot[3]
            if middle is None:  # made when first needed: most traffic may not be audited
                middle = slot[3] = _middle(fields)
            lines.append(line % (stamp, since * 1e6, middle, latency))
    return out


# -- logging -----------------------------------------------------------------------


def _show(text: str | None, limit: int = 80) -> str:
    """A field for a log message: one line, printable, bounded."""
    if text is None:
        return "-"
    shown = text[:limit].encode("unicode_escape").decode("ascii")
    return shown + ("..." if len(text) > limit else "")


_LABELS = {"banned": "banned", "denied": "deny list", "not-allowed": "allow list"}
_VERDICTS = {"allowed": "ALLOWED", "refused": "DENIED", "error": "ERROR"}


def log_extra(event: Event) -> dict[str, Any]:
    """The event's fields for ``extra=``: each name prefixed with ``zsec_``."""
    extra = {f"zsec_{name}": value for name, value in event._asdict().items()}
    extra["zsec_event"] = event.kind
    return extra


def log_event(event: Event, verbose: bool) -> None:
    """Log one event the operations way (refusals INFO, allowed DEBUG unless verbose).

    Decisions go to the ``zsec.auth`` logger, trust changes to ``zsec.trust``;
    the event's fields ride along in ``extra=`` (``zsec_mechanism``,
    ``zsec_reason``...) for structured formatters.
    """
    if isinstance(event, Decision):
        if event.status == 200:
            level = logging.INFO if verbose else logging.DEBUG
        elif event.status == 500 or event.reason_code == "malformed":
            level = logging.WARNING
        else:
            level = logging.INFO
        if not log.isEnabledFor(level):
            return
        # CZMQ's trace line, with the certificate's name added.
        label = _LABELS.get(event.reason_code) or _show(event.mechanism) or "?"
        detail = f"domain={_show(event.domain)} address={_show(event.address)}"
        if event.username is not None:
            detail += f" username={_show(event.username)}"
        elif event.key is not None:
            detail += f" client_key={event.key}"
        if event.cert_name is not None:
            detail += f" name={_show(event.cert_name)}"
        reason = "" if event.status == 200 else f": {_show(event.reason, 200)}"
        log.log(
            level,
            "%s (%s) %s%s",
            _VERDICTS[event.verdict],
            label,
            detail,
            reason,
            extra=log_extra(event),
        )
        return
    if event.action in ("ban-started", "ban-ended", "session-cut"):
        return  # the limiter and the guard log these themselves
    level = logging.WARNING if event.action == "store-unavailable" else logging.INFO
    if not trust_log.isEnabledFor(level):
        return
    detail = ""
    if event.key is not None:
        detail += f" key {event.key}"
    if event.cert_name is not None:
        detail += f" ({_show(event.cert_name)})"
    if event.source is not None:
        detail += f" from {_show(event.source, 200)}"
    if event.address is not None:
        detail += f" address {_show(event.address)}"
    where = f" store {_show(event.store, 200)}" if event.store is not None else ""
    if event.domain is not None:
        where += f" domain {_show(event.domain)}"
    reason = f": {_show(event.reason, 200)}" if event.reason else ""
    trust_log.log(level, "%s%s;%s%s", event.action, detail, where, reason, extra=log_extra(event))


# -- the audit log -------------------------------------------------------------------

_AUDIT_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii
_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode


_MIDDLES: dict[tuple[Any, ...], bytes] = {}


def _json_text(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def audit_line(event: Event) -> bytes:
    """One audit-log line: a JSON object and a newline, ASCII only.

    A decision's line is assembled directly, the same object as
    ``json.dumps(event.to_dict())`` at a fraction of the cost (the events
    thread writes one per decision): the fields between time and latency
    are made once per distinct combination (bounded cache), the date and
    time once per second.
    """
    if type(event) is not Decision:
        return (_encode(event.to_dict()) + "\n").encode("ascii")
    fields = event[1:11]
    middle = _MIDDLES.get(fields)
    if middle is None:
        if len(_MIDDLES) >= _CACHE_LIMIT:
            _MIDDLES.clear()
        middle = _MIDDLES[fields] = _middle(fields)
    when = event[0]
    whole = int(when)
    second = _SECOND_BYTES
    if second[0] != whole:
        second = _second_bytes(whole)
    return _DECISION_LINE % (second[1], (when - whole) * 1e6, middle, event[11])


def _middle(fields: tuple[Any, ...]) -> bytes:
    """The JSON of a decision's fields from mechanism to reason code (``event[1:11]``)."""
    mechanism, domain, address, username, key, cert_name, verdict, status, reason, code = fields
    return (
        f'"mechanism":{_quote(mechanism)},"domain":{_quote(domain)},'
        f'"address":{_quote(address)},"username":{_json_text(username)},'
        f'"key":{_json_text(key)},"cert_name":{_json_text(cert_name)},'
        f'"verdict":{_quote(verdict)},"status":{int(status)},'
        f'"reason":{_quote(reason)},"reason_code":{_quote(code)}'
    ).encode("ascii")


_DECISION_LINE = b'{"event":"decision","time":"%b.%06dZ",%b,"latency":%.7f}\n'
_SECOND_BYTES: tuple[int, bytes] = (-1, b"")


def _second_bytes(whole: int) -> tuple[int, bytes]:
    global _SECOND_BYTES
    stamp = datetime.datetime.fromtimestamp(whole, datetime.timezone.utc)
    _SECOND_BYTES = (whole, stamp.strftime("%Y-%m-%dT%H:%M:%S").encode("ascii"))
    return _SECOND_BYTES


class AuditLog:
    """An append-only JSON-lines file of events that survives crashes and rotation.

    Lines are appended with ``os.write`` on an ``O_APPEND`` descriptor, one
    write per batch, and no line straddles a 4 KiB boundary of the file: a
    line that would is preceded by a padding line, ``{`` spaces ``}`` (an
    empty JSON object, which readers skip because it has no ``event``).
    Linux cuts a write short on a fatal signal only between pages, so a
    writer killed at any instant leaves whole lines only. (Writing each line
    with its own ``write`` is not enough: a line across a page boundary can
    be cut.) A torn last line from any other cause (power loss) is
    ended with a newline at the next open. Assumes one writer per file. Before
    each batch the path is compared with the open file (device and inode):
    after a rotation (rename, then the old name is free) the file is
    reopened, so lines go to the old file until the rename and to the new
    one after, and none is lost; ``reopen()`` does it at once (for SIGHUP).
    New files are created with mode 0600: usernames and addresses are
    personal data.
    """

    def __init__(self, path: Any) -> None:
        self.path = fspath(path, "audit log path")
        self._lock = threading.Lock()
        self._fd = -1
        self._id: tuple[int, int] = (0, 0)
        self.lines = 0
        self.errors = 0
        #: Event lines that a failed write (full disk, I/O error) did not store.
        self.lost = 0
        # A failed write left part of a line at the end of the file.
        self._torn = False
        self._next_error_report = 0.0
        self._open()

    def _open(self) -> None:
        try:
            fd = os.open(self.path, _AUDIT_FLAGS, 0o600)
        except OSError as exc:
            raise AuthError(f"cannot open audit log {self.path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            # A line torn by something worse than a crash (power loss): end
            # it, so the next line parses.
            with contextlib.suppress(OSError):
                if _mid_line(fd, st.st_size):
                    os.write(fd, b"\n")
            # Where the next line starts: O_APPEND leaves the offset at the end.
            self._offset = os.lseek(fd, 0, os.SEEK_END)
        except OSError as exc:  # a pipe or socket cannot seek
            os.close(fd)
            raise AuthError(
                f"cannot use {self.path} as an audit log ({exc.strerror}): give a regular file"
            ) from None
        self._torn = False
        old, self._fd, self._id = self._fd, fd, (st.st_dev, st.st_ino)
        if old >= 0:
            os.close(old)

    def reopen(self) -> None:
        """Open the path again now (after the file was renamed away, e.g. on SIGHUP)."""
        with self._lock:
            if self._fd >= 0:
                self._open()

    def _rotated(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        if (st.st_dev, st.st_ino) != self._id:
            return True
        if st.st_size != self._offset:
            # Truncated in place (logrotate's copytruncate) or written by
            # someone else: pack from where the file ends now, or lines
            # would straddle its 4 KiB blocks.
            self._offset = st.st_size
            self._torn = _mid_line(self._fd, st.st_size)
        return False

    def write(self, events: Sequence[Event], lines: list[bytes] | None = None) -> None:
        """Append one line per event; I/O errors are counted and logged, never raised.

        ``lines``, when given, are the events' ``audit_line`` already made.
        """
        with self._lock:
            if self._fd < 0:
                return
            try:
                if self._rotated():
                    self._open()
            except (OSError, AuthError) as exc:
                self._failed(exc)
            if lines is None:
                lines = [audit_line(event) for event in events]
            if max(map(len, lines), default=0) > _BLOCK:
                lines = [
                    _fitted(event) if len(line) > _BLOCK else line
                    for line, event in zip(lines, events, strict=True)
                ]
            out: list[bytes] = []
            start = self._offset
            if self._torn:
                # A write cut short (disk full) ended mid-line: end that
                # fragment, or the first new line would be glued to it and lost.
                out.append(b"\n")
                start += 1
            _pack(lines, start, out)
            # One write for the batch: Linux stops a write cut short by a
            # fatal signal only between pages, and every page boundary is a
            # line boundary here.
            self._flush(self._fd, out, len(lines))

    def _flush(self, fd: int, chunk: list[bytes], count: int) -> None:
        data = b"".join(chunk)
        done = 0
        try:
            while done < len(data):  # a short write (disk nearly full) goes on
                done += os.write(fd, data[done:])
        except OSError as exc:
            # A write that raises wrote nothing, so ``done`` bytes are in the
            # file: count the event lines among them (padding starts "{ "
            # or is "{}"), and the rest as lost, not written.
            written = sum(1 for piece in _whole(chunk, done) if piece.startswith(b'{"'))
            self.lines += written
            self.lost += count - written
            self._failed(exc)
            # Where the file ends now, and whether mid-line: ask.
            with contextlib.suppress(OSError):
                self._offset = os.lseek(fd, 0, os.SEEK_END)
                self._torn = _mid_line(fd, self._offset)
            return
        self._offset += done
        self._torn = False
        self.lines += count

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        now = time.monotonic()
        if now >= self._next_error_report:
            self._next_error_report = now + DROP_REPORT_SECONDS
            # An application's log filter may raise: the batch's counts,
            # subscribers and flush markers must not go with it.
            with contextlib.suppress(BaseException):
                log.error("cannot write audit log %s: %s", self.path, exc)

    def close(self) -> None:
        """Close the file; later writes are ignored. Idempotent."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __repr__(self) -> str:
        return f"<zsec.AuditLog {self.path} lines={self.lines}>"


_BLOCK = 4096
_FIELD_LIMIT = 200


def _mid_line(fd: int, size: int) -> bool:
    """Whether the file open as ``fd``, ``size`` bytes long, ends inside a line."""
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def _pack(lines: list[bytes], start: int, out: list[bytes]) -> None:
    """Append ``lines`` to ``out``, to be written at file offset ``start``, none across 4 KiB.

    A line that would cross a block boundary is preceded by a padding line
    that closes the block; a line that fits but would leave too little room
    for a padding line (one or two bytes) is widened with spaces to fill it.
    Works a block at a time: the lines that end within the current block
    are found by bisecting their running end offsets. Every line is at most
    one block long.
    """
    ends = list(itertools.accumulate(map(len, lines)))  # relative to the first line's start
    count = len(lines)
    at = start  # the file offset of lines[i]
    i = 0
    while i < count:
        before = ends[i - 1] if i else 0
        free = _BLOCK - at % _BLOCK
        j = bisect_right(ends, before + free, i)  # lines[i:j] end within this block
        if j > i:
            at += ends[j - 1] - before
            left = free - (ends[j - 1] - before)
            if 0 < left < 3:
                out.extend(lines[i : j - 1])
                last = lines[j - 1]
                out.append(last[:-1] + b" " * left + b"\n")
                at += left
            else:
                out.extend(lines[i:j])
            i = j
        else:
            # lines[i] does not fit in what is left of this block.
            out.append(_padding(free))
            at += free


def _whole(chunk: list[bytes], size: int) -> Iterator[bytes]:
    """The pieces of ``chunk`` that lie wholly within its first ``size`` bytes."""
    for piece in chunk:
        size -= len(piece)
        if size < 0:
            return
        yield piece


def _padding(size: int) -> bytes:
    """``size`` bytes that end a block: an empty JSON object and a newline."""
    if size >= 3:
        return b"{" + b" " * (size - 3) + b"}\n"
    return b"\n" * size  # only after a file another writer left unaligned


def _shortened(event: Event, limit: int = _FIELD_LIMIT) -> Event:
    """The event with its text fields cut to ``limit`` characters (and "...")."""

    def cut(value: Any) -> Any:
        if isinstance(value, str) and len(value) > limit:
            return value[:limit] + "..."
        return value

    return type(event)(*(cut(v) for v in event))


def _fitted(event: Event) -> bytes:
    """The event's audit line, its text fields cut until it fits in one block.

    200 characters may not do: JSON escapes a character outside the BMP in
    twelve bytes, and a trust change has three paths and names. At 40 (a
    Z85 key is kept whole) every line fits; "..." alone is the last resort.
    ``_pack`` needs every line within one block.
    """
    for limit in (_FIELD_LIMIT, 40, 0):
        line = audit_line(_shortened(event, limit))
        if len(line) <= _BLOCK:
            break
    return line


def read_audit(lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    """Parse audit lines; padding and anything that is not an event object are skipped."""
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "event" in value:
            yield value


# -- metrics -------------------------------------------------------------------------

LATENCY_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


class Metrics:
    """Prometheus metrics for one authenticator, kept as plain counts and read at scrape time.

    Counting is done in batches, by whichever thread builds them (see
    ``EventHub._build``); ``collect`` turns the counts into metric families when
    Prometheus scrapes. Labels are bounded: mechanism, a configured domain
    (any other is ``"other"``), verdict and reason code; never a key,
    username or address.
    """

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        self._lock = threading.Lock()
        self.decisions: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        # mechanism -> [bucket counts..., +Inf count], sum
        self._latency: dict[str, tuple[list[int], list[float]]] = {}
        self.trust: collections.Counter[str] = collections.Counter()
        self.registries: list[Any] = []

    def count(
        self,
        events: list[Event],
        domains: frozenset[str],
        labels: list[tuple[str, str, str, str]] | None = None,
    ) -> None:
        """Count a batch; ``labels``, if given, are its decisions' ``_labels``, in order.

        Counted with C-level iteration (Counters, sorted latencies bisected
        once per bucket bound): this runs for every decision, under the GIL
        that the ZAP thread needs. The labels ``build_decisions`` gives are
        shared objects (one per distinct set): a hash and an identity check
        per decision.
        """
        if set(map(type, events)) == {Decision}:
            decisions: list[Any] = events
            trust: collections.Counter[str] = collections.Counter()
        else:
            decisions = [e for e in events if type(e) is Decision]
            trust = collections.Counter(e.action for e in events if type(e) is TrustChange)
        raw = collections.Counter(
            labels if labels is not None else map(_DECISION_LABELS, decisions)
        )
        mechanisms = set(map(_MECHANISM, decisions))
        latencies: dict[str, list[float]] = {}
        if len(mechanisms) == 1:
            latencies[mechanisms.pop()] = sorted(map(_LATENCY, decisions))
        else:
            # One pass, grouped by the bounded label: a pass per distinct
            # name would cost n*n when malformed requests each name another.
            for event in decisions:
                mechanism = event[1]
                label = mechanism if mechanism in _MECHANISMS else "other"
                latencies.setdefault(label, []).append(event[11])
            for values in latencies.values():
                values.sort()
        with self._lock:
            counted = self.decisions
            for (mechanism, domain, verdict, code), value in raw.items():
                # Bounded labels: a peer chooses the domain (and garbage mechanisms).
                if mechanism not in _MECHANISMS:
                    mechanism = "other"
                if domain not in domains:
                    domain = "other"
                counted[mechanism, domain, verdict, code] += value
            self.trust.update(trust)
            for mechanism, values in latencies.items():
                label = mechanism if mechanism in _MECHANISMS else "other"
                counts, total = self._latency.setdefault(
                    label, ([0] * (len(LATENCY_BUCKETS) + 1), [0.0])
                )
                # Bucket i holds the values above bound i-1, up to bound i.
                below = 0
                for i, bound in enumerate(LATENCY_BUCKETS):
                    upto = bisect_right(values, bound)
                    counts[i] += upto - below
                    below = upto
                counts[-1] += len(values) - below
                total[0] += sum(values)

    def collect(self) -> Iterator[Any]:
        """Yield the metric families (the prometheus_client collector protocol)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        with self._lock:
            decisions = dict(self.decisions)
            latency = {m: (list(b), t[0]) for m, (b, t) in self._latency.items()}
            trust = dict(self.trust)
        family = CounterMetricFamily(
            "zsec_decisions",
            "ZAP decisions by mechanism, domain, verdict and reason code",
            labels=["mechanism", "domain", "verdict", "reason"],
        )
        for labels, value in sorted(decisions.items()):
            family.add_metric(list(labels), value)
        yield family
        histogram = HistogramMetricFamily(
            "zsec_decision_latency_seconds",
            "Time from receiving a ZAP request to having its reply",
            labels=["mechanism"],
        )
        for mechanism, (buckets, total) in sorted(latency.items()):
            running, cumulative = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
                running += count
                cumulative.append((_bound(bound), running))
            histogram.add_metric([mechanism], cumulative, total)
        yield histogram
        changes = CounterMetricFamily(
            "zsec_trust_changes", "Trust changes by action", labels=["action"]
        )
        for action, value in sorted(trust.items()):
            changes.add_metric([action], value)
        yield changes
        yield CounterMetricFamily(
            "zsec_session_cuts",
            "Live sessions cut after a revocation",
            value=trust.get("session-cut", 0),
        )
        yield CounterMetricFamily(
            "zsec_events_dropped",
            "Events dropped because a queue was full (a subscriber or sink too slow)",
            value=self._hub.dropped,
        )
        policy = self._hub.policy()
        bans = GaugeMetricFamily("zsec_active_bans", "Addresses banned right now")
        bans.add_metric([], 0 if policy.limiter is None else len(policy.limiter.banned))
        yield bans
        certs = GaugeMetricFamily(
            "zsec_certificates", "Certificates trusted per CURVE store", labels=["domain", "store"]
        )
        polling = GaugeMetricFamily(
            "zsec_store_polling",
            "1 when a store's watcher fell back to polling the directory",
            labels=["domain", "store"],
        )
        reloads = CounterMetricFamily(
            "zsec_store_reloads",
            "Times a store re-read its whole source (rescans, etcd reloads)",
            labels=["domain", "store"],
        )
        overflows = CounterMetricFamily(
            "zsec_store_overflows",
            "Times the kernel dropped a store's file events, forcing a rescan",
            labels=["domain", "store"],
        )
        for domain, source in sorted(policy.curve.items()):
            location = getattr(source, "location", None)
            if not hasattr(source, "lookup"):
                continue  # CURVE_ALLOW_ANY
            where = location or "memory"
            certs.add_metric([domain, where], len(source))  # type: ignore[arg-type]
            kind = getattr(source, "observer_kind", "none")
            polling.add_metric([domain, where], 1 if kind == "polling" else 0)
            reloads.add_metric([domain, where], getattr(source, "reloads", 0))
            overflows.add_metric([domain, where], getattr(source, "overflows", 0))
        yield certs
        yield polling
        yield reloads
        yield overflows
        yield CounterMetricFamily(
            "zsec_audit_lines", "Lines written to the audit log", value=self._hub.audit_lines()
        )
        yield CounterMetricFamily(
            "zsec_audit_lost",
            "Audit lines lost because a write failed (disk full, I/O error)",
            value=self._hub.audit_lost(),
        )


_MECHANISMS = frozenset({"NULL", "PLAIN", "CURVE"})
_DECISION_LABELS = operator.itemgetter(1, 2, 7, 10)  # mechanism, domain, verdict, reason code
_METRIC_LABELS: dict[tuple[str, str, str, str], tuple[str, str, str, str]] = {}


def _labels(fields: tuple[Any, ...]) -> tuple[str, str, str, str]:
    """A decision's unbounded metric labels from its ``event[1:11]``, one shared object per set.

    Shared, so that counting them (a dict per batch) finds each by
    identity, without comparing its items.
    """
    key = (fields[0], fields[1], fields[6], fields[9])
    found = _METRIC_LABELS.get(key)
    if found is None:
        if len(_METRIC_LABELS) >= _CACHE_LIMIT:
            _METRIC_LABELS.clear()
        found = _METRIC_LABELS[key] = key
    return found


_MECHANISM = operator.itemgetter(1)
_LATENCY = operator.itemgetter(11)


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


# -- subscribers ---------------------------------------------------------------------


class _Subscription:
    """One subscriber: a bounded queue of batches and a thread that calls the callback."""

    def __init__(self, callback: Callable[[Event], object], limit: int) -> None:
        self.callback = callback
        self.limit = limit
        self.queue: collections.deque[list[Event]] = collections.deque()
        # Events queued (written by the hub's builder, under its lock) and delivered
        # (written by this subscriber's thread only): one shared counter
        # changed by both with += and -= could lose an update.
        self.queued = 0
        self.delivered = 0
        self.dropped = 0
        self._next_report = 0.0
        self._wake = threading.Event()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="zsec-events-subscriber", daemon=True)
        self.thread.start()

    def offer(self, batch: list[Event]) -> int:
        """Queue what fits of ``batch``; return how many events were dropped."""
        room = self.limit - (self.queued - self.delivered)
        if room <= 0:
            self.dropped += len(batch)
            return len(batch)
        dropped = 0
        if len(batch) > room:
            dropped = len(batch) - room
            batch = batch[:room]
            self.dropped += dropped
        self.queued += len(batch)
        self.queue.append(batch)
        self._wake.set()
        return dropped

    def _run(self) -> None:
        queue, wake, callback = self.queue, self._wake, self.callback
        failures = 0
        while True:
            wake.wait(_IDLE_WAKE)
            wake.clear()
            while queue:
                batch = queue.popleft()
                for event in batch:
                    try:
                        callback(event)
                    except BaseException:  # a subscriber's bug is its own, sys.exit() too
                        failures += 1
                        now = time.monotonic()
                        if now >= self._next_report:
                            self._next_report = now + DROP_REPORT_SECONDS
                            with contextlib.suppress(BaseException):
                                log.exception(
                                    "event subscriber %r raised (%d time(s) so far); "
                                    "it stays subscribed",
                                    self.callback,
                                    failures,
                                )
                self.delivered += len(batch)
            if self.closed and not queue:
                return


# -- the hub ---------------------------------------------------------------------------


class EventHub:
    """The bounded hand-off between the ZAP thread and everything that consumes events.

    ``post`` (ZAP thread) and ``publish`` (any thread) never block; the
    dispatcher thread does the rest, except that the ZAP thread builds a
    full batch itself (see ``_build``). ``policy`` returns the policy in
    force, for the verbose flag and the configured domains.
    """

    def __init__(self, policy: Callable[[], Policy], *, limit: int = QUEUE_LIMIT) -> None:
        self.policy = policy
        self._limit = limit
        self._queue: collections.deque[Any] = collections.deque()
        self._slots: dict[tuple[Any, ...], list[Any]] = {}  # see _Raw; ZAP thread only
        self._slots_renewed = time.monotonic()
        self._wake = threading.Event()
        self._idle = False
        # Built batches waiting to be handed on, in order (see _build). The
        # counts are each written by one side only, as in _Subscription.
        self._built: collections.deque[_Built] = collections.deque()
        self._build_lock = threading.Lock()
        self._builds = 0  # under _build_lock
        self._built_events = 0  # under _build_lock
        self._delivered_events = 0  # the dispatcher's
        self._build_failures = 0  # under _build_lock
        self._reported_failures = 0  # the dispatcher's
        self._urgent = False
        self._dropped = 0
        self._reported_drops = 0
        self._drop_lock = threading.Lock()
        self._next_drop_report = 0.0
        self._subscriptions: tuple[_Subscription, ...] = ()
        self._audit: AuditLog | None = None
        self.metrics: Metrics | None = None
        self._watched: dict[tuple[str, int], tuple[Callable[[], None], _StoreListener]] = {}
        self._next_store_check = 0.0
        # Whether anything consumes allowed decisions (a subscriber, audit,
        # metrics, verbose or DEBUG logging); refreshed by the dispatcher at
        # least once a second, and at once by the calls that add a consumer.
        self.want_allowed = True
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="zsec-events", daemon=True)
        self._thread.start()

    # -- producers (never block) ----------------------------------------------------

    def post(
        self,
        t0: float,
        request: ZapRequest | None,
        reply: ZapReply,
        cert: Cert | None = None,
        frames: list[bytes] | None = None,
    ) -> None:
        """Hand over one decision (ZAP thread): a tuple and a deque append.

        Only what the event is made of travels (see ``_Raw``): the request,
        the reply and their frames are freed here, in the thread that made
        them, and the PLAIN password never leaves this thread. When
        ``_INLINE_BATCH`` are queued, this call builds them (see ``_build``).
        """
        if (
            not self.want_allowed
            and reply.status_code == b"200"
            and not log.isEnabledFor(logging.DEBUG)
        ):
            return  # nothing would record it
        queue = self._queue
        if len(queue) >= self._limit or self._closed:
            self._drop()
            return
        if request is not None:
            shape = (
                request.mechanism,
                request.domain,
                request.address,
                request.credentials[:1],
                reply.status_code,
                reply.status_text,
            )
            # One long-lived slot per allowed shape, which the builder
            # fills with the event's fields once: only the times are new per
            # decision, and this shape is freed here, where it was made
            # (allocator traffic between the two threads costs both).
            # Refusals, hostile ones above all, seldom repeat: theirs are
            # used once.
            slot = None
            allowed = reply.status_code == b"200"
            if allowed:
                slot = self._slots.get(shape)
            if slot is None:
                slot = [shape, None, None, None, None]
                if allowed:
                    self._keep(shape, slot)
            queue.append((t0, time.perf_counter(), slot, cert))
        else:
            queue.append(
                (t0, time.perf_counter(), None, (reply.status_code, reply.status_text, frames))
            )
        if (
            len(queue) >= _INLINE_BATCH
            and self._built_events - self._delivered_events < self._limit
            and self._build_lock.acquire(False)
        ):
            # Under load, this thread builds the batch itself: it would
            # otherwise wait for the GIL while the dispatcher built it, and
            # the turns the two threads take cost more than the building
            # does (bench/bench_events.py). Not while the dispatcher builds
            # (the lock), nor past the limit of built events it has yet to
            # hand on (a log handler may block it).
            try:
                self._build(_INLINE_BATCH)
            finally:
                self._build_lock.release()
            self._wake.set()
            return
        if self._idle:
            self._idle = False
            self._wake.set()

    def _keep(self, shape: tuple[Any, ...], slot: list[Any]) -> None:
        slots = self._slots
        if len(slots) < _SLOT_LIMIT:
            slots[shape] = slot
        elif time.monotonic() >= self._slots_renewed + _SLOT_RENEWAL:
            # Full: start again, at most once a minute, so that many distinct
            # clients churn no memory meanwhile; a shape without a slot is
            # only slower to build.
            self._slots = {shape: slot}
            self._slots_renewed = time.monotonic()

    def publish(self, event: Event) -> None:
        """Hand over a ready event (trust changes; any thread)."""
        queue = self._queue
        if len(queue) >= self._limit or self._closed:
            self._drop()
            return
        queue.append(event)
        if self._idle:
            self._idle = False
            self._wake.set()

    def _drop(self, count: int = 1) -> None:
        with self._drop_lock:
            self._dropped += count

    @property
    def dropped(self) -> int:
        """Events dropped so far, by the hub's queue or any subscriber's."""
        return self._dropped

    # -- consumers -----------------------------------------------------------------

    def subscribe(
        self, callback: Callable[[Event], object], limit: int = QUEUE_LIMIT
    ) -> Callable[[], None]:
        if not callable(callback):
            raise ZsecTypeError("an event subscriber must be callable")
        subscription = _Subscription(callback, limit)
        with self._lock:
            self._subscriptions = (*self._subscriptions, subscription)
        self.want_allowed = True

        def unsubscribe() -> None:
            with self._lock:
                self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)
            subscription.closed = True
            subscription._wake.set()

        return unsubscribe

    def set_audit(self, audit: AuditLog | None) -> None:
        with self._lock:
            old, self._audit = self._audit, audit
        self.want_allowed = True
        if old is not None and old is not audit:
            # Events already queued may still go to the old file: flush first.
            self.flush()
            old.close()

    @property
    def audit(self) -> AuditLog | None:
        return self._audit

    def audit_lines(self) -> int:
        audit = self._audit
        return 0 if audit is None else audit.lines

    def audit_lost(self) -> int:
        audit = self._audit
        return 0 if audit is None else audit.lost

    def enable_metrics(self) -> Metrics:
        with self._lock:
            if self.metrics is None:
                self.metrics = Metrics(self)
            self.want_allowed = True
            return self.metrics

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event posted before this call has been handed on.

        Subscribers get them in their own threads, possibly later.
        """
        if threading.current_thread() is self._thread:
            return True
        if self._closed and not self._thread.is_alive():
            # The dispatcher handed on everything it had before it ended;
            # a marker queued now would only be waited out to the timeout.
            return not self._queue
        done = threading.Event()
        self._queue.append(done)
        self._urgent = True
        self._idle = False
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Deliver what is queued, then stop the dispatcher and the subscribers.

        An event posted by another thread while this runs is delivered or
        counted as dropped, except in a window of a few instructions (a
        post that got past its check before this call began).
        """
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                # Posted after the dispatcher's last look: nothing will hand it on.
                left = 0
                while self._queue:
                    item = self._queue.popleft()
                    if isinstance(item, threading.Event):
                        item.set()
                    else:
                        left += 1
                if left:
                    self._drop(left)
        for subscription in self._subscriptions:
            subscription.closed = True
            subscription._wake.set()
        if self._audit is not None:
            self._audit.close()
        # A store the caller passed in outlives this hub: its listener would
        # keep the hub (and the authenticator) alive, publishing to no one.
        with self._lock:
            watched, self._watched = self._watched, {}
        for unsubscribe, _ in watched.values():
            with contextlib.suppress(Exception):
                unsubscribe()

    def refresh(self) -> None:
        """Recompute whether allowed decisions are needed by anything."""
        self.want_allowed = bool(
            self._subscriptions
            or self._audit is not None
            or self.metrics is not None
            or log.isEnabledFor(logging.DEBUG)
            or self.policy().verbose
        )

    # -- the dispatcher ---------------------------------------------------------------

    def _run(self) -> None:
        queue, wake, built, lock = self._queue, self._wake, self._built, self._build_lock
        seen = self._builds
        while True:
            self._idle = True
            if not queue and not built and not self._closed:
                wake.wait(_IDLE_WAKE)
                wake.clear()
            self._idle = False
            count = self._deliver_built()
            # Build here only what the ZAP thread is not building: when it
            # built nothing since the last look (it is not busy), or when a
            # flush or close waits.
            if queue and (seen == self._builds or self._urgent or self._closed):
                self._urgent = False
                with lock:
                    self._build()
                count += self._deliver_built()
            seen = self._builds
            self._report_drops()
            self.refresh()
            now = time.monotonic()
            if now >= self._next_store_check:
                # No file event says "the directory itself is gone": look.
                self._next_store_check = now + STORE_CHECK_SECONDS
                for _, listener in list(self._watched.values()):
                    with contextlib.suppress(BaseException):
                        listener.check()
            if self._closed:
                with lock:  # the ZAP thread may be building the last batch
                    if not queue and not built:
                        return
                continue
            if count > 1:
                # Posts do not end the pause (only an idle dispatcher is
                # woken); a built batch, a flush or close does.
                wake.wait(_BATCH_PAUSE)
                wake.clear()

    def _build(self, limit: int = 0) -> None:
        """Build up to ``limit`` queued events (0: all), count them, feed the subscribers.

        Called with ``_build_lock`` held (batches stay in order), by the
        dispatcher or the ZAP thread, so it must never raise (a failure is
        counted, and reported by the dispatcher), never block and never call
        application code: metrics are counted and subscribers' queues fed
        here, while the audit log, logging and flush markers wait in
        ``_built`` for the dispatcher.
        """
        queue = self._queue
        count = len(queue)
        if limit:
            count = min(count, limit)
        if not count:
            return
        batch = [queue.popleft() for _ in range(count)]
        markers: list[threading.Event] = []
        lines: list[bytes] | None = None if self._audit is None else []
        notable: list[Event] = []
        metrics = self.metrics
        labels: list[tuple[str, str, str, str]] | None = None if metrics is None else []
        try:
            events = build_decisions(batch, _Anchor(), markers, lines, notable, labels)
        except BaseException:  # noqa: BLE001 - reported by the dispatcher
            self._build_failures += 1
            markers = [item for item in batch if isinstance(item, threading.Event)]
            events, lines, notable = [], None, []
            self._drop(len(batch) - len(markers))
        if events:
            # Apart: a failure to count must not cost the subscribers their events.
            try:
                if metrics is not None:
                    policy = self.policy()
                    domains = frozenset(policy.plain) | frozenset(policy.curve)
                    metrics.count(events, domains, labels)
            except BaseException:  # noqa: BLE001 - reported by the dispatcher
                self._build_failures += 1
            try:
                for subscription in self._subscriptions:
                    lost = subscription.offer(events)
                    if lost:
                        self._drop(lost)
            except BaseException:  # noqa: BLE001 - reported by the dispatcher
                self._build_failures += 1
        self._builds += 1
        self._built_events += len(events)
        self._built.append((events, lines, notable, markers))

    def _deliver_built(self) -> int:
        """Hand on every built batch, in order; return how many events they held."""
        built = self._built
        count = 0
        while built:
            events, lines, notable, markers = built.popleft()
            count += len(events)
            try:
                self._deliver(events, lines, notable)
            except BaseException:  # the dispatcher must go on, whatever app code raised
                with contextlib.suppress(BaseException):
                    log.exception("event dispatch failed; %d event(s) lost", len(events))
            self._delivered_events += len(events)
            for marker in markers:
                marker.set()
        failures = self._build_failures
        if failures != self._reported_failures:
            self._reported_failures = failures
            with contextlib.suppress(BaseException):
                log.error(
                    "building, counting or handing out events failed (%d time(s) so far); "
                    "those batches' events are lost to some or all consumers (events that "
                    "could not be built are counted as dropped)",
                    failures,
                )
        return count

    def _deliver(
        self, events: list[Event], lines: list[bytes] | None, notable: list[Event]
    ) -> None:
        """Write one built batch to the audit log, then log it (the dispatcher's)."""
        if not events:
            return
        audit = self._audit
        policy = self.policy()
        # The audit trail first (counts and subscribers' events were handed
        # out when the batch was built): nothing the application plugs into
        # logging (a filter or handler that raises) may cost an audit line.
        if audit is not None:
            audit.write(events, lines)
        verbose = policy.verbose
        try:
            if log.isEnabledFor(logging.DEBUG) or verbose:
                for event in events:
                    log_event(event, verbose)
            else:
                for event in notable:
                    log_event(event, verbose)
        except BaseException:  # noqa: BLE001, S110 - an application's filter raised
            # The broken logger cannot report its own failure; the rest of
            # the batch's log lines are lost, nothing else is.
            pass

    def _report_drops(self) -> None:
        dropped = self._dropped
        if dropped == self._reported_drops:
            return
        now = time.monotonic()
        if now < self._next_drop_report:
            return
        self._next_drop_report = now + DROP_REPORT_SECONDS
        with contextlib.suppress(BaseException):
            log.warning(
                "%d event(s) dropped since the last report (%d in all): an event queue was "
                "full; a subscriber or the audit log is too slow",
                dropped - self._reported_drops,
                dropped,
            )
        self._reported_drops = dropped

    # -- trust sources -------------------------------------------------------------------

    def watch_stores(self, curve: Mapping[str, object]) -> None:
        """Follow the trust changes of every CertStore in ``curve`` (domain -> source).

        Stores no longer configured are let go. Call after each change to
        the CURVE configuration.
        """
        with self._lock:
            watched = self._watched
            wanted: dict[tuple[str, int], Any] = {
                (domain, id(source)): source
                for domain, source in curve.items()
                if hasattr(source, "subscribe")
            }
            for key in [k for k in watched if k not in wanted]:
                watched.pop(key)[0]()
            for key, source in wanted.items():
                if key not in watched:
                    listener = _StoreListener(self, key[0], source)
                    watched[key] = (source.subscribe(listener), listener)

    def follow_bans(self, limiter: FailureLimiter) -> None:
        """Publish ``ban-started`` and ``ban-ended`` for ``limiter`` (called in the ZAP thread)."""

        def started(address: bytes) -> None:
            self.publish(
                TrustChange(
                    time.time(),
                    "ban-started",
                    address=address[:255].decode("ascii", "backslashreplace"),
                    duration=limiter.ban,
                    reason="repeated authentication failures",
                )
            )

        def ended(address: bytes) -> None:
            self.publish(
                TrustChange(
                    time.time(),
                    "ban-ended",
                    address=address[:255].decode("ascii", "backslashreplace"),
                )
            )

        limiter.on_ban(started)
        limiter.on_ban_end(ended)

    def cut_listener(self, cut: Cut) -> None:
        """``Auth.subscribe_cuts`` callback: the guard closed a live session."""
        identity = cut.identity
        self.publish(
            TrustChange(
                cut.time,
                "session-cut",
                domain=cut.domain,
                key=identity if cut.mechanism == "CURVE" else None,
                address=cut.address,
                reason=cut.reason + ("" if cut.mechanism == "CURVE" else f" (identity {identity})"),
            )
        )


class _StoreListener:
    """Turns one store's changes into trust events for one domain."""

    def __init__(self, hub: EventHub, domain: str, store: CertStore) -> None:
        self.hub = hub
        self.domain = domain
        self.store = store
        self.where = store.location or "memory"
        self.available = True

    def __call__(self, change: StoreChange) -> None:
        now = time.time()
        publish, domain, where = self.hub.publish, self.domain, self.where
        sources = change.sources
        if self.store.location is None and change.store:
            self.where = where = change.store  # e.g. an etcd prefix
        for action, certs in (
            ("key-revoked", change.removed),
            ("key-added", change.added),
            ("key-updated", change.updated),
        ):
            for cert in certs:
                publish(
                    TrustChange(
                        now,
                        action,
                        domain,
                        where,
                        cert.public_txt,
                        _cert_name(cert),
                        _source(sources, cert),
                    )
                )

    def check(self) -> None:
        """Publish store-unavailable / store-ready when the directory goes or comes back."""
        location = self.store.location
        # A directory store: does the directory exist? Another source: is it ready?
        if location is not None:
            available = os.path.isdir(location)
        else:
            available = bool(getattr(self.store, "ready", True))
        if available == self.available:
            return
        self.available = available
        if available:
            self.hub.publish(TrustChange(time.time(), "store-ready", self.domain, self.where))
        else:
            self.hub.publish(
                TrustChange(
                    time.time(),
                    "store-unavailable",
                    self.domain,
                    self.where,
                    reason="the directory is gone: its keys are no longer trusted",
                )
            )


def _source(sources: object, cert: Cert) -> str | None:
    """The file a certificate came from, when the store says so."""
    if isinstance(sources, Mapping):
        found = sources.get(cert.public_key, sources.get(cert.public_txt))
        return None if found is None else str(found)
    return getattr(cert, "_source", None)


def start_metrics_server(metrics: Metrics, port: int, addr: str) -> tuple[Any, threading.Thread]:
    """Serve ``metrics`` at http://addr:port/metrics; returns (server, thread)."""
    registry = metrics_registry(metrics)
    from prometheus_client import start_http_server

    try:
        return start_http_server(port, addr, registry=registry)
    except OSError as exc:
        raise AuthError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") from None


def metrics_registry(metrics: Metrics, registry: Any = None) -> Any:
    """Register ``metrics`` in ``registry`` (a new one by default) and return the registry."""
    try:
        from prometheus_client import CollectorRegistry
    except ImportError:
        raise AuthError("metrics need prometheus_client: pip install 'zsec[metrics]'") from None
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
    if not any(r is registry for r in metrics.registries):
        registry.register(metrics)
        metrics.registries.append(registry)
    return registry


__all__ = [
    "AuditLog",
    "Decision",
    "EventHub",
    "Metrics",
    "TrustChange",
    "audit_line",
    "read_audit",
]
