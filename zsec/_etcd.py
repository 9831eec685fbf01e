"""etcd as a fleet-wide trust source: the one module that knows etcd and its client.

A follower thread reads a key prefix once (one ``Range``, consistent at the
response's revision R), then watches the prefix from R+1. After a lost
connection it resumes from the last applied revision + 1, so no change is
missed; when etcd answers that this history was compacted, it reads the
whole prefix again. Consumers get the whole set (``on_reset``) or a batch
of changes (``on_update``), always in revision order, and a readiness signal.

The client is gRPC through the protocol stubs that ship with
``etcd-sdk-python`` (``pyetcd.etcdrpc``); its high-level client is not used,
because it refuses its only endpoint for 300 s after one failure and hides
response headers and error codes. Every connection here is a fresh gRPC
channel, closed after use. ``pip install 'zsec[etcd]'`` installs grpcio,
protobuf and the stubs; nothing here is imported until an etcd object is made.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ._cert import MAX_CERT_BYTES, Cert, fast_fields, public_cert
from ._errors import (
    CertificateError,
    EtcdError,
    EtcdPermissionError,
    EtcdUnavailable,
    KeyFormatError,
    PasswordError,
    ZsecTypeError,
    ZsecValueError,
)
from ._keys import coerce_key, z85_decode_keys
from ._passwords import _HASH_PARAMS, PasswordTable, check_username
from ._source import TrustFeed, TrustSource
from ._throttle import MAX_TRACKED

log = logging.getLogger("zsec.etcd")

DEFAULT_CERT_PREFIX = "/zsec/certs/"
DEFAULT_USER_PREFIX = "/zsec/users/"
# etcd's default --max-txn-ops; a larger server setting can be passed on.
DEFAULT_MAX_TXN_OPS = 128
# One Range page: ~5,000 certificates of ~300 bytes stay well under the
# receive limit set below, and a page is pinned to the snapshot's revision.
_PAGE = 5000
_MAX_MESSAGE = 64 << 20
# gRPC keepalive finds a silently dead connection (a partition, a paused
# VM) within ~15 s; etcd refuses pings more often than every 5 s.
_KEEPALIVE_MS = 10_000
_KEEPALIVE_TIMEOUT_MS = 5_000
_MIN_BACKOFF = 0.05
_MAX_BACKOFF = 2.0


# -- the client ----------------------------------------------------------------


def _client_modules() -> tuple[Any, Any]:
    """(grpc, pyetcd.etcdrpc), or EtcdError naming the extra to install."""
    try:
        grpc = importlib.import_module("grpc")
        etcdrpc = importlib.import_module("pyetcd.etcdrpc")
    except ImportError as exc:
        raise EtcdError(
            f"the etcd client is not installed ({exc.name} is missing): pip install 'zsec[etcd]'"
        ) from None
    return grpc, etcdrpc


def prefix_end(prefix: bytes) -> bytes:
    """The etcd ``range_end`` that covers every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # etcd: every key >= key


def check_prefix(prefix: str | bytes) -> bytes:
    """``prefix`` as bytes; raises ``ZsecValueError`` unless it ends with "/".

    etcd prefixes are byte prefixes: ``/zsec/certs`` also covers
    ``/zsec/certs2/...``, a neighbour's keys (and whoever may write them).
    """
    raw = prefix.encode("utf-8", "surrogateescape") if isinstance(prefix, str) else bytes(prefix)
    if not raw.endswith(b"/"):
        raise ZsecValueError(
            f"an etcd prefix must end with '/' (such as /zsec/certs/), not {prefix!r}: "
            "without it, keys of any prefix that merely starts alike would be read too"
        )
    return raw


@dataclass(frozen=True)
class EtcdSettings:
    """Where etcd is and how to log in: endpoints, TLS files, user and password.

    ``endpoints`` are ``host:port`` or ``http(s)://host:port`` strings; a
    follower tries them in turn. TLS is on when ``ca_cert`` or a client
    certificate is given or an endpoint says ``https`` (without ``ca_cert``
    the system's roots verify the server).
    ``cert``/``key`` are a client certificate (etcd maps its CN to a user
    when run with ``--client-cert-auth``). A password is never sent over
    plain TCP except to a loopback address. The password is not in the repr.
    """

    endpoints: Sequence[str] = ("127.0.0.1:2379",)
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 5.0

    def __post_init__(self) -> None:
        # One comma-separated string or any sequence; always a tuple after.
        endpoints = self.endpoints
        parts = endpoints.split(",") if isinstance(endpoints, str) else endpoints
        object.__setattr__(self, "endpoints", tuple(parts))
        object.__setattr__(self, "timeout", float(self.timeout))
        if not self.endpoints:
            raise ZsecValueError("give at least one etcd endpoint, such as 127.0.0.1:2379")
        for endpoint in self.endpoints:
            _parse_endpoint(endpoint)
        if (self.cert is None) != (self.key is None):
            raise ZsecValueError("a client certificate needs both cert and key files")
        if (self.user is None) != (self.password is None):
            raise ZsecValueError("etcd password login needs both user and password")
        if not 0 < self.timeout < 3600:
            raise ZsecValueError("the etcd timeout must be between 0 and 3600 seconds")
        if self.password is not None and not self.tls:
            for endpoint in self.endpoints:
                host = _parse_endpoint(endpoint)[1]
                if not _is_loopback(host):
                    raise ZsecValueError(
                        f"refusing to send an etcd password to {endpoint} without TLS; "
                        "give ca_cert (--ca-cert) or use an https:// endpoint"
                    )

    @property
    def tls(self) -> bool:
        return (
            self.ca_cert is not None
            or self.cert is not None
            or any(_parse_endpoint(e)[0] for e in self.endpoints)
        )

    def connect(self, index: int = 0) -> EtcdConnection:
        """A new connection to endpoint ``index`` (modulo their number), logged in."""
        return EtcdConnection(self, self.endpoints[index % len(self.endpoints)])


def _parse_endpoint(endpoint: str) -> tuple[bool, str, int]:
    """(https?, host, port) of ``host:port`` or ``http(s)://host:port``."""
    if not isinstance(endpoint, str):
        raise ZsecTypeError(f"an etcd endpoint must be a str, not {type(endpoint).__name__}")
    text = endpoint.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port or 2379
    except ValueError:
        parts, port = None, 0
    # Never echo what precedes an "@": it may be a password.
    shown = repr(endpoint) if "@" not in endpoint else "'***@" + endpoint.rsplit("@", 1)[1] + "'"
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ZsecValueError(f"etcd endpoint {shown} is not host:port or http(s)://host:port")
    if parts.path not in ("", "/") or parts.username or parts.query:
        raise ZsecValueError(
            f"etcd endpoint {shown} must be only a scheme, host and port "
            "(give a user with user=/--user, never in the endpoint)"
        )
    return parts.scheme == "https", parts.hostname, port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Compacted(Exception):
    """The revision asked for is gone from etcd's history: read everything again."""

    def __init__(self, compact_revision: int, message: str = "") -> None:
        kept = f" (oldest revision kept: {compact_revision})" if compact_revision else ""
        super().__init__(message or f"the history it needs was compacted{kept}")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class Event:
    """One change under a prefix: ``value`` None means the key was deleted."""

    key: bytes
    value: bytes | None
    revision: int


class EtcdConnection:
    """One gRPC channel to one etcd endpoint, with errors mapped to zsec's.

    Made by ``EtcdSettings.connect``; close it (or use ``with``). Calls are
    thread-safe (gRPC's), each bounded by the settings' timeout.
    """

    def __init__(self, settings: EtcdSettings, endpoint: str) -> None:
        grpc, rpc = _client_modules()
        self._grpc, self._rpc = grpc, rpc
        self.settings = settings
        self.endpoint = endpoint
        https, host, port = _parse_endpoint(endpoint)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        options = [
            ("grpc.keepalive_time_ms", _KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            # gRPC shares connections between channels to one target, with its
            # own reconnect backoff (up to 2 min); a fresh channel must mean a
            # fresh connection, so each reconnect follows our backoff instead.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if settings.tls or https:
            creds = grpc.ssl_channel_credentials(
                _read(settings.ca_cert), _read(settings.key), _read(settings.cert)
            )
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._kv = rpc.KVStub(self._channel)
        self._watch = rpc.WatchStub(self._channel)
        self._lease = rpc.LeaseStub(self._channel)
        self._metadata: tuple[tuple[str, str], ...] = ()
        self.cluster_id = 0  # of the last snapshot read (get_prefix)
        try:
            if settings.user is not None:
                auth = rpc.AuthStub(self._channel)
                request = rpc.AuthenticateRequest(name=settings.user, password=settings.password)
                reply = self._call(auth.Authenticate, request)
                self._metadata = (("token", reply.token),)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> EtcdConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.settings.timeout, metadata=self._metadata)
        except self._grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: Any) -> Exception:
        """The zsec error for a gRPC error (no secret is ever in etcd's messages)."""
        codes = self._grpc.StatusCode
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        details = (exc.details() if callable(getattr(exc, "details", None)) else "") or ""
        where = f"etcd {self.endpoint}"
        if code == codes.OUT_OF_RANGE and "compacted" in details:
            return _Compacted(0)
        if code in (codes.PERMISSION_DENIED, codes.UNAUTHENTICATED) or (
            "authentication failed" in details or "permission denied" in details
        ):
            who = f"user {self.settings.user!r}" if self.settings.user else "this client"
            return EtcdPermissionError(
                f"{where} refused {who}: {details}; check the user, password or client "
                "certificate, and that its role may read (servers) or write (operators) the prefix"
            )
        if code in (codes.UNAVAILABLE, codes.DEADLINE_EXCEEDED, codes.CANCELLED):
            return EtcdUnavailable(f"{where} unavailable: {details or code}")
        name = code.name if code is not None else type(exc).__name__
        return EtcdError(f"{where} failed ({name}): {details}")

    # -- reads -----------------------------------------------------------------

    def revision(self, prefix: bytes = b"\0") -> int:
        """etcd's current revision, from a linearizable count of the keys under ``prefix``.

        Counting under a prefix lets a role limited to that prefix ask.
        """
        request = self._rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix), count_only=True)
        return int(self._call(self._kv.Range, request).header.revision)

    def get_prefix(self, prefix: bytes, page: int = _PAGE) -> tuple[int, dict[bytes, bytes]]:
        """Every key under ``prefix`` as one consistent snapshot: (revision, {key: value}).

        Large prefixes are read in pages, all pinned to the first page's
        revision. Raises ``_Compacted`` if that revision is compacted midway
        (the caller starts again).
        """
        end = prefix_end(prefix)
        start, revision = prefix, 0
        out: dict[bytes, bytes] = {}
        while True:
            request = self._rpc.RangeRequest(
                key=start, range_end=end, limit=page, revision=revision
            )
            reply = self._call(self._kv.Range, request)
            if revision == 0:
                revision = int(reply.header.revision)
                self.cluster_id = int(reply.header.cluster_id)
            for kv in reply.kvs:
                out[kv.key] = kv.value
            if not reply.more or not reply.kvs:
                return revision, out
            start = reply.kvs[-1].key + b"\0"

    def watch(self, prefix: bytes, start_revision: int) -> WatchStream:
        """Watch ``prefix`` from ``start_revision``; see ``WatchStream``."""
        return WatchStream(self, prefix, start_revision)

    # -- writes ----------------------------------------------------------------

    def txn(
        self, puts: Mapping[bytes, bytes] = {}, deletes: Iterable[bytes] = (), lease: int = 0
    ) -> int:
        """Apply puts and deletes in one transaction (one revision); returns that revision."""
        return self.txn_deleted(puts, deletes, lease)[0]

    def txn_deleted(
        self, puts: Mapping[bytes, bytes] = {}, deletes: Iterable[bytes] = (), lease: int = 0
    ) -> tuple[int, list[int]]:
        """``txn``, also returning how many keys each delete removed (0 or 1 for a key)."""
        rpc = self._rpc
        ops = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v, lease=lease))
            for k, v in puts.items()
        ]
        ops += [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k)) for k in deletes]
        if not ops:
            return self.revision(), []
        reply = self._call(self._kv.Txn, rpc.TxnRequest(success=ops))
        deleted = [
            int(r.response_delete_range.deleted)
            for r in reply.responses
            if r.HasField("response_delete_range")
        ]
        return int(reply.header.revision), deleted

    def delete(self, key: bytes) -> int:
        """Delete one key; returns how many keys were deleted (0 or 1)."""
        reply = self._call(self._kv.DeleteRange, self._rpc.DeleteRangeRequest(key=key))
        return int(reply.deleted)

    def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (what etcd's auto-compaction does)."""
        self._call(self._kv.Compact, self._rpc.CompactionRequest(revision=revision, physical=True))

    def grant_lease(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds: keys put with it are deleted when it expires."""
        reply = self._call(self._lease.LeaseGrant, self._rpc.LeaseGrantRequest(TTL=ttl))
        return int(reply.ID)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    from ._files import read_capped

    return read_capped(path, 1 << 20, "TLS file")


class WatchStream:
    """An etcd watch on a prefix: iterate it for batches of ``Event`` in revision order.

    The first batch is empty: it means the watch was created (etcd accepted
    the start revision), and ``created_revision`` is then etcd's revision.
    Iteration raises ``_Compacted`` when the start revision is gone,
    ``EtcdError`` when the stream ends; ``cancel()`` ends it from another
    thread. The watch asks etcd to cancel it when its member
    loses the cluster leader (etcd's ``hasleader`` metadata), so a member cut
    off by a partition cannot keep feeding stale silence.
    """

    def __init__(self, conn: EtcdConnection, prefix: bytes, start_revision: int) -> None:
        rpc = conn._rpc
        self._conn = conn
        self._done = threading.Event()
        self._cancelled = False
        self.created_revision = 0  # etcd's revision when the watch was created
        self.created_cluster = 0  # and the cluster that answered
        create = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=prefix, range_end=prefix_end(prefix), start_revision=start_revision
            )
        )

        def requests() -> Iterator[Any]:
            yield create
            self._done.wait()  # keep the stream open until cancelled

        self._call = conn._watch.Watch(
            requests(), metadata=(*conn._metadata, ("hasleader", "true"))
        )

    def cancel(self) -> None:
        self._cancelled = True
        self._done.set()
        self._call.cancel()

    def __iter__(self) -> Iterator[list[Event]]:
        grpc = self._conn._grpc
        try:
            for reply in self._call:
                if reply.compact_revision:
                    raise _Compacted(int(reply.compact_revision))
                if reply.canceled:
                    reason = reply.cancel_reason or "watch cancelled by etcd"
                    if "permission denied" in reason:
                        raise EtcdPermissionError(
                            f"etcd {self._conn.endpoint} refused the watch: {reason}; "
                            "check that this user's role may read the prefix"
                        )
                    raise EtcdUnavailable(f"etcd {self._conn.endpoint} ended the watch: {reason}")
                if reply.created:
                    self.created_revision = int(reply.header.revision)
                    self.created_cluster = int(reply.header.cluster_id)
                    yield []
                    continue
                if reply.events:
                    yield [
                        Event(e.kv.key, None if e.type == 1 else e.kv.value, e.kv.mod_revision)
                        for e in reply.events
                    ]
        except grpc.RpcError as exc:
            if self._cancelled:
                return
            raise self._conn._error(exc) from None
        finally:
            self._done.set()
        if not self._cancelled:
            raise EtcdUnavailable(f"etcd {self._conn.endpoint} closed the watch")


# -- the follower ------------------------------------------------------------


class Follower:
    """Follows one etcd prefix in a thread: a snapshot, then every change, never one missed.

    ``on_reset({name: value})`` gives the whole set (names are keys without
    the prefix); ``on_update({name: value}, [deleted names])`` one watch
    batch; ``on_ready(ready, reason)`` each change of readiness. They run in
    the follower's thread, in revision order, and must not block for long.

    Readiness: not ready until the first snapshot; ready while connected;
    after a lost connection still ready (on the last known set) for
    ``max_outage`` seconds, then not ready until a fresh snapshot is read.
    ``max_outage=None`` keeps the last known set for as long as etcd is
    away: an explicit choice, since it may keep trusting a key revoked
    meanwhile.
    """

    def __init__(
        self,
        settings: EtcdSettings,
        prefix: str | bytes,
        *,
        on_reset: Callable[[dict[str, bytes]], None],
        on_update: Callable[[dict[str, bytes], list[str]], None],
        on_ready: Callable[[bool, str], None],
        max_outage: float | None = 60.0,
        name: str = "etcd",
    ) -> None:
        if max_outage is not None and not 0 <= max_outage < float("inf"):
            raise ZsecValueError("max_outage must be a number of seconds >= 0, or None")
        self.settings = settings
        self.prefix = check_prefix(prefix)
        self.max_outage = max_outage
        _client_modules()  # fail now, not in the thread, when the extra is missing
        self._on_reset, self._on_update, self._on_ready = on_reset, on_update, on_ready
        self._name = name
        self.revision = 0  # last applied revision; 0 = no snapshot yet
        self._cluster = 0  # etcd cluster ID of that revision's history
        self.ready = False
        self.reason = "waiting for the first load from etcd"
        self.reloads = 0
        self.reconnects = 0  # outages seen
        self.failures = 0  # failed attempts, across outages
        self._lock = threading.Lock()  # applying a batch vs refresh()
        self._stop = threading.Event()
        self._stream: WatchStream | None = None
        self._thread = threading.Thread(target=self._run, name=f"zsec-{name}", daemon=True)
        self._ready_event = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop following; idempotent. Readiness is left to the caller."""
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until ready once (or ``timeout``); returns whether it is ready now."""
        self._ready_event.wait(timeout)
        return self.ready

    def refresh(self) -> None:
        """Read the whole prefix now with a new connection; in force when this returns.

        Raises ``EtcdError`` when etcd cannot be read.
        """
        with self.settings.connect() as conn:
            while True:
                try:
                    revision, values = conn.get_prefix(self.prefix)
                    break
                except _Compacted:
                    continue
        with self._lock:
            if revision > self.revision or conn.cluster_id != self._cluster:
                self._reset(values, revision, conn.cluster_id)

    # -- the thread --------------------------------------------------------

    def _run(self) -> None:
        backoff = _MIN_BACKOFF
        lost_since: float | None = None
        endpoint = random.randrange(len(self.settings.endpoints))  # noqa: S311 - spread, not secrecy
        while not self._stop.is_set():
            conn = None
            try:
                conn = self.settings.connect(endpoint)
                if self.revision == 0:
                    self._snapshot(conn)
                stream = conn.watch(self.prefix, self.revision + 1)
                self._stream = stream
                if self._stop.is_set():
                    stream.cancel()
                for batch in self._first_within(stream, self.settings.timeout):
                    if not batch and stream.created_revision < self.revision:
                        # etcd is behind what we applied: restored from an older
                        # backup, or replaced. Its history is not ours: read it all.
                        raise _Compacted(
                            0,
                            f"etcd is at revision {stream.created_revision}, behind "
                            f"the {self.revision} applied here",
                        )
                    if not batch and stream.created_cluster != self._cluster:
                        # Another cluster (a DNS change, an endpoint list that
                        # mixes clusters): its revisions are not ours to resume.
                        raise _Compacted(
                            0, f"etcd {conn.endpoint} belongs to another cluster than the last read"
                        )
                    if lost_since is not None or not self.ready:
                        lost_since = None
                        backoff = _MIN_BACKOFF
                        self._set_ready(True, "")
                    if batch:
                        self._apply(batch)
                if self._stop.is_set():
                    return
                raise EtcdUnavailable("the watch ended")
            except _Compacted as exc:
                log.warning("%s: %s; reading the whole prefix again", self._name, exc)
                self.revision = 0
                continue
            except Exception as exc:  # noqa: BLE001 - the follower must outlive any failure
                if self._stop.is_set():
                    return
                if lost_since is None:
                    lost_since = time.monotonic()
                    self.reconnects += 1
                    log.warning("%s: connection lost (%s); reconnecting", self._name, exc)
                if isinstance(exc, EtcdPermissionError):
                    # Retry slowly: an operator may fix the role meanwhile.
                    if self.revision == 0:
                        self._set_ready(False, str(exc))
                    backoff = _MAX_BACKOFF
                # Counted last, so that whoever sees the count also sees the reason.
                self.failures += 1
                endpoint += 1
            finally:
                self._stream = None
                if conn is not None:
                    conn.close()
            # Back off with jitter (a fleet reconnecting after an etcd restart
            # must not arrive all at once), and enforce the outage bound
            # while waiting.
            delay = backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not secrecy
            backoff = min(backoff * 2, _MAX_BACKOFF)
            while delay > 0 and not self._stop.is_set():
                step = delay
                if self.ready and self.max_outage is not None and lost_since is not None:
                    left = lost_since + self.max_outage - time.monotonic()
                    if left <= 0:
                        self.revision = 0  # a fresh snapshot before trusting again
                        self._set_ready(
                            False,
                            f"etcd unreachable for more than {self.max_outage:g} s",
                        )
                        continue
                    step = min(step, left)
                self._stop.wait(step)
                delay -= step

    def _first_within(self, stream: WatchStream, timeout: float) -> Iterator[list[Event]]:
        """The stream's batches; cancel it if etcd does not confirm the watch within timeout."""
        timer = threading.Timer(timeout, stream.cancel)
        timer.daemon = True
        timer.start()
        try:
            for batch in stream:
                timer.cancel()
                yield batch
        finally:
            timer.cancel()

    def _snapshot(self, conn: EtcdConnection) -> None:
        while True:
            try:
                revision, values = conn.get_prefix(self.prefix)
                break
            except _Compacted:
                continue
        with self._lock:
            self._reset(values, revision, conn.cluster_id)
        self._set_ready(True, "")

    def _reset(self, values: dict[bytes, bytes], revision: int, cluster: int) -> None:
        cut = len(self.prefix)
        # The key equal to the prefix itself names no entry.
        entries = {
            k[cut:].decode("utf-8", "surrogateescape"): v for k, v in values.items() if k[cut:]
        }
        self.reloads += 1
        if not self._safely(self._on_reset, entries):
            raise EtcdError(f"{self._name}: the snapshot could not be applied; retrying")
        self.revision, self._cluster = revision, cluster
        log.info("%s: loaded %d entries at revision %d", self._name, len(entries), revision)

    def _apply(self, batch: list[Event]) -> None:
        cut = len(self.prefix)
        with self._lock:
            put: dict[str, bytes] = {}
            deleted: dict[str, None] = {}
            for event in batch:
                # After refresh() the watch may replay what the snapshot holds.
                if event.revision <= self.revision:
                    continue
                name = event.key[cut:].decode("utf-8", "surrogateescape")
                if not name:
                    continue
                if event.value is None:
                    put.pop(name, None)
                    deleted[name] = None
                else:
                    deleted.pop(name, None)
                    put[name] = event.value
            if (put or deleted) and not self._safely(self._on_update, put, list(deleted)):
                # Never guess: a change that was not applied means reading everything again.
                raise _Compacted(0, "a change could not be applied")
            self.revision = max(self.revision, batch[-1].revision)

    def _set_ready(self, ready: bool, reason: str) -> None:
        if ready == self.ready and reason == self.reason:
            return
        self.ready, self.reason = ready, reason
        if ready:
            log.info("%s: ready (revision %d)", self._name, self.revision)
        else:
            log.warning("%s: not ready, refusing everyone: %s", self._name, reason)
        self._safely(self._on_ready, ready, reason)
        if ready:
            self._ready_event.set()  # after the consumer knows

    def _safely(self, callback: Callable[..., None], *args: Any) -> bool:
        try:
            callback(*args)
        except Exception:
            log.exception("%s: a consumer callback failed", self._name)
            return False
        return True


# -- certificates --------------------------------------------------------------


def cert_from_entry(name: str, value: bytes) -> Cert:
    """The public certificate an etcd entry holds; raises ``CertificateError`` if none.

    The value is a public certificate file's text (what ``Cert.save_public``
    writes, metadata included) or a bare 40-character Z85 public key. When
    the entry's name is itself a Z85 public key (the layout ``zsec trust``
    writes), it must be the certificate's key.
    """
    source = f"etcd entry {name!r}"
    if len(value) > MAX_CERT_BYTES:
        raise CertificateError(f"{source}: larger than {MAX_CERT_BYTES} bytes")
    text = value.strip()
    if len(text) == 40 and b"\n" not in text:
        try:
            cert = Cert.from_keys(text.decode("ascii"))
        except (KeyFormatError, UnicodeDecodeError):
            raise CertificateError(f"{source}: not a Z85 public key or certificate") from None
    else:
        cert = Cert.from_bytes(value, source)
    if cert._secret is not None:
        log.warning("%s holds a secret key; etcd should hold public certificates only", source)
        cert._secret = None
    if len(name) == 40:
        try:
            named = coerce_key(name, "entry name")
        except KeyFormatError:
            named = None
        if named is not None and named != cert.public_key:
            raise CertificateError(
                f"{source}: named after another key than the certificate's ({cert.public_txt})"
            )
    cert._freeze()
    return cert


class _Following:
    """Readiness of something fed by a ``Follower``: one set of answers for every etcd consumer."""

    _follower: Follower

    @property
    def ready(self) -> bool:
        """Whether the set is current enough to trust (fail closed until it is)."""
        return self._follower.ready

    @property
    def reason(self) -> str:
        """Why it is not ready ("" when it is)."""
        return self._follower.reason

    @property
    def revision(self) -> int:
        """The etcd revision applied last (0 before the first load)."""
        return self._follower.revision

    @property
    def reloads(self) -> int:
        """How many times the whole prefix was read (1 after start; more after compaction)."""
        return self._follower.reloads

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the first load (or ``timeout``); returns ``ready``."""
        return self._follower.wait_ready(timeout)


class EtcdSource(_Following, TrustSource):
    """Trusted public certificates kept in etcd under a prefix, followed live.

    ``zsec.CertStore(EtcdSource(...))``, given to ``Auth.configure_curve``,
    trusts every certificate under ``prefix`` (default ``/zsec/certs/``):
    one key per certificate, named after its Z85 public key, whose value is
    the public certificate text. Lookups stay dict hits
    in the store; changes arrive by watch within milliseconds, and none is
    missed across disconnects (see ``Follower``).

    Fails closed: nobody is trusted until the first load, nor after etcd has
    been unreachable for ``max_outage`` seconds (``None``: keep the last
    known set, an explicit trade-off). ``ready`` and ``reason`` tell the
    state; each change is logged on the ``zsec.etcd`` logger. Entries that
    are not valid certificates are skipped with one log line each.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = "127.0.0.1:2379",
        *,
        prefix: str = DEFAULT_CERT_PREFIX,
        ca_cert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
        max_outage: float | None = 60.0,
    ) -> None:
        self.settings = EtcdSettings(endpoints, ca_cert, cert, key, user, password, timeout)
        self.prefix = prefix
        self.max_outage = max_outage
        self._feed: TrustFeed | None = None
        self._bad: dict[str, str] = {}
        self._follower = Follower(
            self.settings,
            prefix,
            on_reset=self._reset,
            on_update=self._update,
            on_ready=self._ready,
            max_outage=max_outage,
            name=f"etcd source {prefix}",
        )

    def __repr__(self) -> str:
        return f"<EtcdSource {self.describe()} ready={self.ready}>"

    def describe(self) -> str:
        return f"etcd {','.join(self.settings.endpoints)} {self.prefix}"

    def start(self, feed: TrustFeed) -> None:
        """Begin feeding ``feed`` (called once by the store)."""
        if self._feed is not None:
            raise ZsecValueError("this EtcdSource already feeds a store; make one per store")
        self._feed = feed
        feed.set_ready(False, self._follower.reason)
        self._follower.start()

    def close(self) -> None:
        """Stop following etcd; idempotent. A closed source is not ready (it follows nothing)."""
        self._follower.close()
        # Quietly: closing is not an outage worth a warning.
        self._follower.ready, self._follower.reason = False, "closed"

    def refresh(self) -> None:
        """Read the whole prefix now; raises ``EtcdError`` when etcd cannot be read."""
        self._follower.refresh()

    def _certs(self, values: Mapping[str, bytes]) -> tuple[dict[str, Cert], list[str]]:
        # The common layout is read with one regex and the keys decoded in
        # one batch (as the directory store does); anything else takes the
        # full reader, which also gives the reason an entry is refused.
        good: dict[str, Cert] = {}
        bad: list[str] = []
        pending: list[tuple[str, str, str]] = []
        slow: list[str] = []
        for name, value in values.items():
            fields = fast_fields(value) if len(value) > 60 else None
            if fields is None or fields[1] is not None:
                slow.append(name)
            else:
                pending.append((name, fields[0], fields[2]))
        keys = z85_decode_keys([text for _, text, _ in pending])
        for (name, text, meta), public in zip(pending, keys, strict=True):
            if public is None or (len(name) == 40 and name != text):
                slow.append(name)  # the full reader says what is wrong
            else:
                good[name] = public_cert(public, text, meta)
        for name in slow:
            try:
                good[name] = cert_from_entry(name, values[name])
            except CertificateError as exc:
                bad.append(name)
                if self._bad.get(name) != str(exc):
                    self._bad[name] = str(exc)
                    log.warning("skipped %s", exc)
        if self._bad:
            for name in good:
                if self._bad.pop(name, None) is not None:
                    log.info("etcd entry %r is a valid certificate again", name)
        return good, bad

    def _reset(self, values: dict[str, bytes]) -> None:
        self._bad = {k: v for k, v in self._bad.items() if k in values}
        good, _ = self._certs(values)
        assert self._feed is not None
        self._feed.reset(good)

    def _update(self, put: dict[str, bytes], deleted: list[str]) -> None:
        good, bad = self._certs(put)
        for name in deleted:
            self._bad.pop(name, None)
        assert self._feed is not None
        self._feed.update(put=good, delete=[*deleted, *bad])

    def _ready(self, ready: bool, reason: str) -> None:
        assert self._feed is not None
        self._feed.set_ready(ready, reason)


# -- PLAIN users ---------------------------------------------------------------

# libsodium's "sensitive" limits (1 GiB; argon2i's 8 passes) are the most
# an etcd entry may ask every server to spend on one login.
_MAX_HASH_KIB = 1 << 20
_MAX_HASH_PASSES = 8


def check_user_entry(username: str, entry: bytes) -> bytes:
    """The argon2 hash to store for ``username``; refuses anything else (a clear password).

    Raises ``PasswordError``; the message never contains the entry.
    """
    try:
        raw = username.encode("utf-8")
    except UnicodeEncodeError:  # a key that was not UTF-8 (decoded with surrogateescape)
        raise PasswordError("a username must be UTF-8 text") from None
    check_username(raw)
    params = _HASH_PARAMS.match(entry)
    if params is None or len(entry) > 512 or b"\n" in entry:
        raise PasswordError(
            f"the etcd entry for user {username!r} must be an argon2 hash string "
            "($argon2id$v=19$m=...); clear-text passwords are never stored in etcd"
        )
    # Every server runs this hash (and a decoy of the same cost for unknown
    # users) on each login: a writer must not be able to make it exhaust memory or time.
    if int(params.group(2)) > _MAX_HASH_KIB or int(params.group(3)) > _MAX_HASH_PASSES:
        raise PasswordError(
            f"the etcd entry for user {username!r} asks for more than "
            f"{_MAX_HASH_KIB // 1024} MiB or {_MAX_HASH_PASSES} passes; "
            "hash with libsodium's interactive to sensitive limits"
        )
    return entry


class EtcdPasswords(_Following, PasswordTable):
    """PLAIN users kept in etcd under a prefix as argon2 hashes, followed live.

    ``/zsec/users/<username>`` holds the user's argon2id string (what
    ``zsec trust passwd`` writes). Anything else, a clear-text password
    above all, is ignored with a log line that never shows the value.
    Checked like a ``PasswordFile``: constant time, a verified password
    remembered as a keyed digest. Fails closed like ``EtcdSource``: nobody
    is admitted until the first load, nor after etcd has been unreachable
    for ``max_outage`` seconds (``None``: keep the last known users).
    Call ``close()`` to stop following.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = "127.0.0.1:2379",
        *,
        prefix: str = DEFAULT_USER_PREFIX,
        ca_cert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
        max_outage: float | None = 60.0,
    ) -> None:
        super().__init__({})
        self.settings = EtcdSettings(endpoints, ca_cert, cert, key, user, password, timeout)
        self.prefix = prefix
        self._users: dict[str, bytes] = {}
        self._bad: set[str] = set()
        self._follower = Follower(
            self.settings,
            prefix,
            on_reset=self._reset,
            on_update=self._update,
            on_ready=lambda ready, reason: self._push(),
            max_outage=max_outage,
            name=f"etcd passwords {prefix}",
        )
        self._push()
        self._follower.start()

    def __repr__(self) -> str:
        where = f"etcd {','.join(self.settings.endpoints)} {self.prefix}"
        return f"<EtcdPasswords {where} users={len(self)} ready={self.ready}>"

    def close(self) -> None:
        """Stop following etcd and admit nobody; idempotent."""
        self._follower.close()
        with self._lock:
            self._publish({}, "closed")

    def _valid(self, name: str, value: bytes) -> bool:
        try:
            check_user_entry(name, value)
        except PasswordError as exc:
            if name not in self._bad:
                self._bad.add(name)
                log.warning(
                    "ignored etcd user entry %r: %s (clear-text passwords are never used)",
                    name,
                    "not a valid username"
                    if "username" in str(exc)
                    else "too costly a hash"
                    if "MiB" in str(exc)
                    else "not an argon2 hash",
                )
            return False
        self._bad.discard(name)
        return True

    def _reset(self, values: dict[str, bytes]) -> None:
        self._users = {n: v for n, v in values.items() if self._valid(n, v)}
        self._push()

    def _update(self, put: dict[str, bytes], deleted: list[str]) -> None:
        users = dict(self._users)
        for name in deleted:
            users.pop(name, None)
        for name, value in put.items():
            if self._valid(name, value):
                users[name] = value
            else:
                users.pop(name, None)
        self._users = users
        self._push()

    def _push(self) -> None:
        if self._follower.ready:
            users: dict[str | bytes, str | bytes] = {k: v for k, v in self._users.items()}
            self.replace(users)
        else:
            with self._lock:
                self._publish({}, self._follower.reason)


# -- fleet-wide bans -------------------------------------------------------------

DEFAULT_BAN_PREFIX = "/zsec/bans/"
# As many shared bans as a FailureLimiter tracks bans of its own.
MAX_SHARED_BANS = MAX_TRACKED


class EtcdBans:
    """Failure bans shared by a fleet through etcd leases: banned on one server, on all.

    ``attach(limiter)`` (the ``FailureLimiter`` of ``auth.policy.limiter``,
    after ``auth.set_failure_limit``) writes each ban this server starts to
    ``<prefix><address>`` under an etcd lease of the ban's length, and makes
    the limiter refuse every address banned anywhere in the fleet. etcd
    deletes the key when the lease expires and the watch brings the deletion
    to every server; a ban also ends locally at its length, and never lasts
    longer than the limiter's own ``ban``, so neither an etcd outage nor a
    writer to the prefix can make one last longer. Bans only ever add refusals, so
    while etcd is unreachable the last known bans stay in force (and this
    server's new bans stay local). The ZAP thread never waits for etcd: it
    only queues a new ban for this object's writer thread.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = "127.0.0.1:2379",
        *,
        prefix: str = DEFAULT_BAN_PREFIX,
        ca_cert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        import queue

        self.settings = EtcdSettings(endpoints, ca_cert, cert, key, user, password, timeout)
        self.prefix = prefix
        self._limiters: list[Any] = []
        self._bans: dict[str, float] = {}  # address -> seconds, as etcd holds them
        self._queue: queue.SimpleQueue[tuple[bytes, float] | None] = queue.SimpleQueue()
        self._unsubscribe: list[Callable[[], None]] = []
        self._follower = Follower(
            self.settings,
            prefix,
            on_reset=self._reset,
            on_update=self._update,
            on_ready=lambda ready, reason: None,
            max_outage=None,
            name=f"etcd bans {prefix}",
        )
        self._writer = threading.Thread(target=self._write, name="zsec-etcd-bans", daemon=True)
        self._closed = False
        self._follower.start()
        self._writer.start()

    def __repr__(self) -> str:
        where = f"etcd {','.join(self.settings.endpoints)} {self.prefix}"
        return f"<EtcdBans {where} banned={len(self._bans)}>"

    @property
    def banned(self) -> list[str]:
        """Addresses etcd holds a ban for right now (as last seen)."""
        return sorted(self._bans)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the first load of the bans (or ``timeout``)."""
        return self._follower.wait_ready(timeout)

    def attach(self, limiter: Any) -> None:
        """Share ``limiter``'s bans with the fleet and make it honour the fleet's bans."""
        if not hasattr(limiter, "on_ban") or not hasattr(limiter, "shared_bans"):
            raise ZsecTypeError(
                f"attach() needs a zsec.FailureLimiter, not {type(limiter).__name__}"
            )
        self._limiters.append(limiter)
        self._unsubscribe.append(
            limiter.on_ban(lambda address: self._queue.put((address, limiter.ban)))
        )
        self._push()

    def close(self) -> None:
        """Stop sharing; the fleet's bans are lifted from the attached limiters. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._queue.put(None)
        self._follower.close()
        self._writer.join(timeout=10)
        self._bans = {}
        self._push()

    def _write(self) -> None:
        conn: EtcdConnection | None = None
        while True:
            item = self._queue.get()
            if item is None:
                break
            address, seconds = item
            value = json.dumps({"seconds": seconds}).encode()
            for _ in range(2):  # one retry with a fresh connection
                try:
                    if conn is None:
                        conn = self.settings.connect()
                    lease = conn.grant_lease(max(1, math.ceil(seconds)))
                    conn.txn({self.prefix.encode() + address: value}, lease=lease)
                    break
                except Exception as exc:  # noqa: BLE001 - a ban that cannot be shared stays local
                    log.warning(
                        "could not share the ban on %s through etcd: %s", _show(address), exc
                    )
                    if conn is not None:
                        conn.close()
                    conn = None
        if conn is not None:
            conn.close()

    def _reset(self, values: dict[str, bytes]) -> None:
        self._bans = {}
        self._update(values, [])

    def _update(self, put: dict[str, bytes], deleted: list[str]) -> None:
        bans = dict(self._bans)
        for name in deleted:
            bans.pop(name, None)
        dropped = 0
        for name, value in put.items():
            seconds = _ban_seconds(value)
            if seconds is None:
                log.warning('ignored etcd ban entry %r: not {"seconds": N}', name[:64])
                continue
            if name not in bans and len(bans) >= MAX_SHARED_BANS:
                dropped += 1  # every server may write bans: one must not exhaust the rest
                continue
            bans[name] = seconds
        if dropped:
            log.warning(
                "ignored %d etcd ban entries: %d shared bans are held already (the most kept)",
                dropped,
                len(bans),
            )
        self._bans = bans
        self._push()

    def _push(self) -> None:
        for limiter in self._limiters:
            now = limiter._clock()
            old = limiter.shared_bans
            # A ban keeps its end when it is seen again; a new one ends after its
            # length, never later than this server's own ban would: a writer to
            # the prefix (or a key put without a lease) cannot ban for longer.
            limiter.shared_bans = {
                a.encode("utf-8", "surrogateescape"): old.get(
                    a.encode("utf-8", "surrogateescape"), now + min(s, limiter.ban)
                )
                for a, s in self._bans.items()
            }


def _ban_seconds(value: bytes) -> float | None:
    """The length a ban entry asks for, or None for anything but a small ``{"seconds": N}``.

    Total: any writer of the ban prefix (every server) may write any bytes.
    """
    if len(value) > 64:  # also keeps json from recursing or converting huge numbers
        return None
    try:
        entry = json.loads(value)
        seconds = float(entry["seconds"]) if isinstance(entry, dict) else math.nan
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return None
    return seconds if 0 < seconds < 366 * 86400 else None


def _show(address: bytes) -> str:
    return address[:64].decode("ascii", "backslashreplace")
