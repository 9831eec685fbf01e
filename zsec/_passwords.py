"""PLAIN passwords: PasswordFile (CZMQ's ``name=password`` lines, reloaded live) and PasswordTable.

Plain-text passwords are compared as keyed digests under a per-process key,
so the comparison takes the same time whatever the password and its length.
Hashed entries hold libsodium's argon2id string (``zsec passwd`` writes
them); a verified password is remembered as such a digest, so only the first
login of a user after a change pays for argon2.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ._errors import FileAccessError, PasswordError, ZsecError, ZsecTypeError
from ._files import SECRET_MODE, fspath, owner_to_keep, read_capped, write_atomic

log = logging.getLogger("zsec.auth")

MAX_PASSWORD_FILE_BYTES = 16 << 20
_HASH_PREFIXES = (b"$argon2id$", b"$argon2i$")
# Passwords are compared as keyed BLAKE2b digests under a per-process key:
# equal-length values, compared in constant time, and about four times
# cheaper than HMAC-SHA256 on the ZAP path.
_DIGEST_BYTES = 32
_MAC = hashlib.blake2b(key=secrets.token_bytes(32), digest_size=_DIGEST_BYTES)


def _digest(password: bytes) -> bytes:
    mac = _MAC.copy()
    mac.update(password)
    return mac.digest()


# Tags of entries (PasswordFile.entry_tag) under their own key, so a tag
# never equals the digest it was made from.
_TAG_MAC = hashlib.blake2b(key=secrets.token_bytes(32), digest_size=16)

# Compared against when the user does not exist, so that an unknown user
# costs the same as a wrong password.
_DUMMY = _digest(b"")
# A file changed this recently may still be being written: its last line,
# if not yet ended by a newline, could be a cut-off password prefix.
_SETTLE_SECONDS = 1.0


def parse_passwords(data: bytes, *, complete: bool = True) -> dict[bytes, bytes]:
    """Parse password-file bytes into ``{username: entry}``; total for any input.

    Follows CZMQ (zhashx_load): one ``name=password`` per line, split at the
    first ``=``, no trimming, ``#`` in column 0 starts a comment, lines
    without ``=`` or with an empty name are ignored, the last entry for a
    name wins. Unlike CZMQ, a CR before the LF is not part of the password.
    With ``complete=False`` a last line without a newline is left out.
    Entries are 32-byte keyed digests of plain passwords, or (longer) argon2
    hash strings.
    """
    if not isinstance(data, bytes):
        raise ZsecTypeError(f"password data must be bytes, not {type(data).__name__}")
    lines = data.split(b"\n")
    if not complete and lines and lines[-1]:
        lines.pop()
    entries: dict[bytes, bytes] = {}
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line or line[0] == 0x23:  # '#'
            continue
        name, sep, password = line.partition(b"=")
        if not sep or not name:
            continue
        entries[name] = password if password.startswith(_HASH_PREFIXES) else _digest(password)
    return entries


class _State(NamedTuple):
    """One version of a password set, replaced as a whole so a check never mixes two."""

    entries: dict[bytes, bytes]  # username -> keyed digest (32 bytes) or argon2 string
    verified: dict[bytes, bytes]  # username -> digest of a password argon2 accepted
    decoy: bytes | None  # a hashed entry to time refusals against, when there are hashes
    version: int
    problem: str  # why the source is unusable ("" when it is fine)


class _PasswordSet:
    """The state and the check shared by ``PasswordFile`` and ``PasswordTable``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _State({}, {}, None, 0, "")

    def __len__(self) -> int:
        return len(self._state.entries)

    def __contains__(self, username: object) -> bool:
        if isinstance(username, str):
            username = username.encode("utf-8")
        return username in self._state.entries

    @property
    def version(self) -> int:
        """A number that grows by one each time the set of entries changes."""
        return self._state.version

    def entry_tag(self, username: bytes | str) -> bytes | None:
        """An opaque tag of the user's entry: it changes when the entry does; None for no user.

        Lets a caller notice that a user was removed or given a new password
        without holding the password. The tag is a keyed digest under a
        per-process key, so it tells nothing about the password or its hash.
        """
        if isinstance(username, str):
            username = username.encode("utf-8")
        entry = self._state.entries.get(username)
        if entry is None:
            return None
        mac = _TAG_MAC.copy()
        mac.update(len(username).to_bytes(4, "big"))
        mac.update(username)
        mac.update(entry)
        return mac.digest()

    def check(self, username: bytes, password: bytes) -> bytes:
        """Return b"" when the password is right for the user, else the reason it is not."""
        self._refresh()
        # One snapshot for the whole check: a reload meanwhile must not let
        # a password verified against the old entries into the new cache.
        state = self._state
        entry = state.entries.get(username)
        given = _digest(password)
        if entry is None:
            # An unknown user costs what a known one does, so timing does not
            # tell which names exist: a digest compare, and a decoy hash check
            # when there are hashes (the result is ignored).
            hmac.compare_digest(given, _DUMMY)
            if state.decoy is not None:
                _verify_hash(state.decoy, password)
            return b"password file unavailable" if state.problem else b"unknown user"
        if len(entry) == _DIGEST_BYTES:
            if hmac.compare_digest(given, entry):
                return b""
            if state.decoy is not None:
                _verify_hash(state.decoy, password)  # as slow as a hashed user's refusal
            return b"wrong password"
        remembered = state.verified.get(username)
        if remembered is not None and hmac.compare_digest(given, remembered):
            return b""
        if _verify_hash(entry, password):
            state.verified[username] = given
            return b""
        return b"wrong password"

    def _refresh(self) -> None:
        """Bring the entries up to date before a check (nothing to do for a fixed table)."""

    def _publish(self, entries: dict[bytes, bytes], problem: str = "") -> None:
        """Make ``entries`` the current set; the caller holds ``self._lock``."""
        old = self._state
        if entries == old.entries:
            # Same entries: passwords verified so far are still right.
            self._state = old._replace(problem=problem)
            return
        hashed = any(len(e) != _DIGEST_BYTES for e in entries.values())
        decoy = _decoy_hash() if hashed else None
        self._state = _State(entries, {}, decoy, old.version + 1, problem)


class PasswordTable(_PasswordSet):
    """PLAIN passwords given in memory: ``{user: password}``, checked like a ``PasswordFile``.

    Keys and values are str (UTF-8) or bytes. A value is a clear-text
    password or an argon2 string from ``zsec passwd`` / libsodium (one that
    starts with ``$argon2id$`` or ``$argon2i$`` is taken as a hash). Clear
    passwords are kept only as keyed digests under a per-process key, compared
    in constant time, and never shown in a repr, log or error.
    """

    def __init__(self, mapping: Mapping[str | bytes, str | bytes]) -> None:
        super().__init__()
        self.replace(mapping)

    def __repr__(self) -> str:
        return f"<PasswordTable users={len(self)}>"

    def replace(self, mapping: Mapping[str | bytes, str | bytes]) -> None:
        """Swap in a new set of users and passwords in one step; ``version`` grows if it differs."""
        entries = _table_entries(mapping)
        with self._lock:
            self._publish(entries)


def _table_entries(mapping: Mapping[str | bytes, str | bytes]) -> dict[bytes, bytes]:
    if not isinstance(mapping, Mapping):
        raise ZsecTypeError(
            f"passwords must be a mapping of user to password, not {type(mapping).__name__}"
        )
    entries: dict[bytes, bytes] = {}
    for user, password in mapping.items():
        name = _as_bytes(user, "a username")
        secret = _as_bytes(password, "a password")
        if not 0 < len(name) <= 255:
            # Empty: the login's User-Id would be empty, which names nobody
            # (zsec gives every other admission 1-255 bytes; a password file
            # ignores such lines too).
            raise PasswordError("a username must be 1-255 bytes (PLAIN cannot send more)")
        entries[name] = secret if secret.startswith(_HASH_PREFIXES) else _digest(secret)
    return entries


def _as_bytes(value: object, what: str, encoding: str = "utf-8") -> bytes:
    """``value`` as bytes (str encoded with ``encoding``); errors never hold the value."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        # Never echo the value: it may be a password.
        raise ZsecTypeError(f"{what} must be str or bytes, not {type(value).__name__}")
    try:
        return value.encode(encoding)
    except UnicodeEncodeError:
        pass
    # Raised outside the handler: a UnicodeEncodeError carries the whole
    # string in its args, and as __context__ it would reach any traceback.
    raise PasswordError(f"{what} cannot be encoded as {encoding}; give bytes or another encoding")


class PasswordFile(_PasswordSet):
    """A password file for PLAIN, checked in constant time and reloaded when it changes.

    The file is read when the object is made (a missing file is an error
    then); afterwards a change is noticed within ``check_interval`` seconds
    of the next login attempt. A file that disappears or cannot be read
    admits nobody until it is back.
    """

    def __init__(self, path: Any, *, check_interval: float = 0.1) -> None:
        super().__init__()
        self.path = fspath(path, "password file path")
        self._interval = float(check_interval)
        self._signature: tuple[int, ...] | None = None
        self._next_check = 0.0
        self._load(raise_errors=True)

    def __repr__(self) -> str:
        return f"<PasswordFile {self.path} users={len(self)}>"

    def reload(self) -> None:
        """Read the file again now."""
        self._load(raise_errors=False)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._interval
            self._load(raise_errors=False)

    def _load(self, *, raise_errors: bool) -> None:
        with self._lock:
            try:
                st = os.stat(self.path)
                signature = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)
                if signature == self._signature:
                    return
                data = read_capped(self.path, MAX_PASSWORD_FILE_BYTES, "password file")
            except (OSError, ZsecError) as exc:
                if raise_errors:
                    if isinstance(exc, FileAccessError):
                        raise
                    raise FileAccessError(
                        f"cannot read password file {self.path}: {exc}", filename=self.path
                    ) from None
                reason = str(exc)
                if reason != self._state.problem:
                    log.warning(
                        "password file %s unusable, nobody is admitted: %s", self.path, reason
                    )
                self._signature = None
                self._publish({}, reason)
                return
            settled = time.time() - st.st_mtime >= _SETTLE_SECONDS
            complete = settled or data.endswith(b"\n") or not data
            entries = parse_passwords(data, complete=complete)
            if self._state.problem:
                log.warning("password file %s is usable again", self.path)
            self._publish(entries)
            # Until the file settles, keep looking: its last line may grow.
            self._signature = signature if complete else None
            log.debug("loaded %d user(s) from %s", len(entries), self.path)


@functools.cache
def _decoy_hash() -> bytes:
    """A valid argon2id hash of a random password, made once (with zsec passwd's limits)."""
    return hash_password(secrets.token_bytes(16))


def _verify_hash(entry: bytes, password: bytes) -> bool:
    from nacl import exceptions, pwhash

    try:
        return bool(pwhash.verify(entry, password))
    except exceptions.InvalidkeyError:
        return False
    except (exceptions.CryptoError, ValueError, TypeError) as exc:
        log.warning("a hashed password entry is not a valid argon2 string (%s)", type(exc).__name__)
        return False


def hash_password(
    password: bytes, *, opslimit: int | None = None, memlimit: int | None = None
) -> bytes:
    """Return libsodium's argon2id string for a password (interactive limits by default)."""
    from nacl import pwhash

    kwargs = {}
    if opslimit is not None:
        kwargs["opslimit"] = opslimit
    if memlimit is not None:
        kwargs["memlimit"] = memlimit
    return bytes(pwhash.argon2id.str(password, **kwargs))


def check_username(username: bytes) -> bytes:
    """Return ``username`` if a password file line can hold it, else raise ``PasswordError``."""
    if not username or len(username) > 255:
        raise PasswordError("a username must be 1 to 255 bytes")
    if username[:1] == b"#" or any(c in username for c in b"=\n\r"):
        raise PasswordError("a username cannot start with '#' or contain '=' or a line break")
    return username


def set_password(
    path: str,
    username: bytes,
    password: bytes,
    *,
    hasher: Callable[[bytes], bytes] = hash_password,
) -> bool:
    """Add or replace a hashed entry for ``username``; returns True when it replaced one.

    Other lines (comments, other users) are kept as they are. The file is
    written atomically with mode 0600.
    """
    check_username(username)
    if not password or len(password) > 255 or any(c in password for c in b"\n\r"):
        raise PasswordError("a password must be 1 to 255 bytes without line breaks")
    path = fspath(path, "password file path")
    try:
        data = read_capped(path, MAX_PASSWORD_FILE_BYTES, "password file")
    except FileAccessError as exc:
        if exc.errno != 2:  # ENOENT: start a new file
            raise
        data = b""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    entry = username + b"=" + hasher(password)
    kept, replaced = [], False
    for line in lines:
        body = line[:-1] if line.endswith(b"\r") else line
        name, sep, _ = body.partition(b"=")
        if sep and name == username and body[:1] != b"#":
            if not replaced:
                kept.append(entry)
            replaced = True
        else:
            kept.append(line)
    if not replaced:
        kept.append(entry)
    # Keep the file's owner and a group-read bit if it had one (a service
    # may read it through its group), never anything wider; but only for a
    # plain file in a directory others cannot write.
    owner = owner_to_keep(path)
    mode = SECRET_MODE
    if owner is not None:
        mode |= os.stat(path).st_mode & 0o040
    write_atomic([(path, b"\n".join(kept) + b"\n", mode)], owner=owner)
    return replaced
