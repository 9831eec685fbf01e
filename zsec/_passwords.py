"""PLAIN passwords: PasswordFile (CZMQ's ``name=password`` lines, reloaded live) and PasswordTable.

Plain-text passwords are compared as keyed digests under a per-process key,
so the comparison takes the same time whatever the password and its length.
Hashed entries hold libsodium's argon2id string (``zsec passwd`` writes
them); a verified password is remembered as such a digest, so only the first
login of a user after a change pays for argon2. A refusal that runs no real
hash (an unknown user, a wrong clear-text password) runs a decoy made with
the limits of the entries actually present, so timing does not tell which
usernames exist.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from ._errors import FileAccessError, PasswordError, ZsecError, ZsecTypeError, ZsecValueError
from ._files import (
    SECRET_MODE,
    fspath,
    mode_problem,
    owner_to_keep,
    read_capped,
    read_regular,
    stat_signature,
    write_atomic,
)

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
# Picks the decoy an unknown user is timed against, by username.
_PICK_MAC = hashlib.blake2b(key=secrets.token_bytes(32), digest_size=8)

# Compared against when the user does not exist, so that an unknown user
# costs the same as a wrong password.
_DUMMY = _digest(b"")
# A file changed this recently may still be being written: its last line,
# if not yet ended by a newline, could be a cut-off password prefix.
_SETTLE_SECONDS = 1.0


def parse_passwords(
    data: bytes, *, complete: bool = True, ignored: list[int] | None = None
) -> dict[bytes, bytes]:
    """Parse password-file bytes into ``{username: entry}``; total for any input.

    Follows CZMQ (zhashx_load): one ``name=password`` per line, split at the
    first ``=``, no trimming, ``#`` in column 0 starts a comment, lines
    without ``=`` or with an empty name are ignored, the last entry for a
    name wins. Unlike CZMQ, a CR before the LF is not part of the password.
    With ``complete=False`` a last line without a newline is left out.
    Entries are 32-byte keyed digests of plain passwords, or (longer) argon2
    hash strings. The 1-based numbers of the ignored non-blank, non-comment
    lines are appended to ``ignored`` when it is given.
    """
    if not isinstance(data, bytes):
        raise ZsecTypeError(f"password data must be bytes, not {type(data).__name__}")
    lines = data.split(b"\n")
    if not complete and lines and lines[-1]:
        lines.pop()
    entries: dict[bytes, bytes] = {}
    for number, line in enumerate(lines, 1):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line or line[0] == 0x23:  # '#'
            continue
        name, sep, password = line.partition(b"=")
        if not sep or not name:
            if ignored is not None:
                ignored.append(number)
            continue
        entries[name] = password if password.startswith(_HASH_PREFIXES) else _digest(password)
    return entries


class _State(NamedTuple):
    """One version of a password set, replaced as a whole so a check never mixes two."""

    entries: dict[bytes, bytes]  # username -> keyed digest (32 bytes) or argon2 string
    verified: dict[bytes, bytes]  # username -> digest of a password argon2 accepted
    # Decoy hashes, one per hashed entry (shared per parameter set): a refusal
    # that runs no real hash runs the decoy picked for its username instead.
    decoys: tuple[bytes, ...]
    version: int
    problem: str  # why the source is unusable ("" when it is fine)


class _PasswordSet:
    """The state and the check shared by ``PasswordFile`` and ``PasswordTable``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _State({}, {}, (), 0, "")
        # Told after each change (the live-revocation guard); copy on write.
        self._listeners: tuple[Callable[[], None], ...] = ()

    def on_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after each change of the entries; returns an unsubscribe function.

        It runs in the changing thread, right after the new entries are in
        force, and must be quick; an exception from it is logged and ignored.
        """
        self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            self._listeners = tuple(x for x in self._listeners if x is not listener)

        return unsubscribe

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
            _run_decoy(state.decoys, username, password)
            return b"password file unavailable" if state.problem else b"unknown user"
        if len(entry) == _DIGEST_BYTES:
            if hmac.compare_digest(given, entry):
                return b""
            _run_decoy(state.decoys, username, password)  # as slow as a hashed refusal
            return b"wrong password"
        remembered = state.verified.get(username)
        if remembered is not None and hmac.compare_digest(given, remembered):
            return b""
        if _usable(entry) is None:
            # Refused when loaded (and said then): never run, timed as a refusal.
            _run_decoy(state.decoys, username, password)
            return b"wrong password"
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
        decoys = _decoys_for(entries.values())
        self._state = _State(entries, {}, decoys, old.version + 1, problem)
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a listener must not undo the change
                log.exception("password change listener failed")


# The limits of an argon2 string: the variant, then memory (KiB), passes and
# lanes. libsodium checks any lane count (other tools, argon2-cffi among
# them, write p=4), though it makes only p=1 strings itself.
_HASH_PARAMS = re.compile(
    rb"\$(argon2id|argon2i)\$v=19\$m=([0-9]{1,10}),t=([0-9]{1,10}),p=([0-9]{1,10})"
    rb"\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)"
)
#: Most memory an entry may ask for: libsodium's "sensitive" limit, 1 GiB.
MAX_HASH_KIB = 1 << 20
#: Most work (memory in KiB times passes) an entry may ask for: the most any
#: of libsodium's presets asks, 4 GiB-passes (a few seconds of one core).
MAX_HASH_WORK = 4 << 20


def _usable(entry: bytes) -> re.Match[bytes] | None:
    """The parts of an argon2 entry zsec will run, or None.

    An entry is run on the authenticator thread, so one whose limits ask for
    more than ``MAX_HASH_KIB`` of memory or ``MAX_HASH_WORK`` of work (a
    planted ``m=4194304`` or ``t=4294967295``) would stall every login or
    exhaust memory: such an entry is refused without running it.
    """
    match = _HASH_PARAMS.fullmatch(entry)
    if match is None:
        return None
    kib, passes = int(match.group(2)), int(match.group(3))
    if kib > MAX_HASH_KIB or kib * passes > MAX_HASH_WORK:
        return None
    return match


def _decoys_for(entries: Iterable[bytes]) -> tuple[bytes, ...]:
    """One decoy per hashed entry: the entry with its salt and hash replaced by random ones.

    A refusal that runs no real hash (an unknown user, a wrong clear-text
    password) verifies against the decoy picked by its username: unknown
    names then fall on each parameter set in the proportion that real users
    do, so an unknown user costs what a known user with a wrong password
    costs. Keeping the entry's own text around the random parts keeps every
    limit (variant, memory, passes, lanes, lengths), including those
    libsodium can check but not make (several lanes, argon2i with fewer
    than 3 passes), and costs nothing to make. Entries of the same limits
    and lengths share one decoy.
    """
    decoys = []
    made: dict[tuple[bytes, int, int], bytes] = {}  # one per limits and lengths
    refused = 0
    for entry in entries:
        if len(entry) == _DIGEST_BYTES:
            continue
        match = _usable(entry)
        if match is None:
            refused += 1
            continue
        shape = (entry[: match.start(5)], len(match.group(5)), len(match.group(6)))
        decoy = made.get(shape)
        if decoy is None:
            decoy = made[shape] = shape[0] + _random_b64(shape[1]) + b"$" + _random_b64(shape[2])
        decoys.append(decoy)
    if refused:
        log.warning(
            "%d hashed password entr%s refused: not an argon2 string libsodium can check, or "
            "limits above m=%d KiB or %d KiB-passes; fix: hash them again with zsec passwd",
            refused,
            "y" if refused == 1 else "ies",
            MAX_HASH_KIB,
            MAX_HASH_WORK,
        )
    return tuple(decoys)


def _random_b64(chars: int) -> bytes:
    """Random unpadded base64 of ``chars`` characters (as long as the part it replaces).

    Made by encoding whole random bytes, so the unused bits of the last
    character are zero: libsodium refuses any other base64 before hashing,
    and a decoy it refuses would cost nothing.
    """
    return base64.b64encode(secrets.token_bytes(chars * 3 // 4)).rstrip(b"=")


def _run_decoy(decoys: tuple[bytes, ...], username: bytes, password: bytes) -> None:
    if decoys:
        pick = _PICK_MAC.copy()
        pick.update(username)
        _verify_hash(decoys[int.from_bytes(pick.digest(), "big") % len(decoys)], password)


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
            # Empty would give an empty User-Id; PLAIN cannot send more than 255.
            raise PasswordError("a username must be 1 to 255 bytes")
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

    The file is read when the object is made (a missing, unreadable or
    refused file is a ``FileAccessError`` then); afterwards a change is
    noticed within ``check_interval`` seconds of the next login attempt. A
    file that disappears, cannot be read or is refused admits nobody until
    it is back. Only a regular file is read, and never with a blocking open,
    so a FIFO or device in its place cannot hang the authenticator.

    With ``strict=True`` (the default) the file is refused when group or
    others can write it or its directory (the one named, and the one a
    symlink leads to), or when either is owned by another user than this
    process's or root, as ``CertStore`` refuses such certificates: either
    would let someone else add a user. ``strict=False`` turns the check off.
    A clear-text entry in a file that others can read is used, with a warning.
    """

    def __init__(self, path: Any, *, check_interval: float = 0.1, strict: bool = True) -> None:
        super().__init__()
        self.path = fspath(path, "password file path")
        self._interval = float(check_interval)
        if not 0 <= self._interval < math.inf:  # also false for NaN
            # NaN or infinity would stop reloads: a removed user stays admitted.
            raise ZsecValueError("check_interval must be a finite number of seconds, 0 or more")
        self._strict = bool(strict)
        self._signature: tuple[int, ...] | None = None
        self._next_check = 0.0
        # What was last said about the file, so each finding is logged once.
        self._said_ignored: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self._said_readable = False
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
                # Whoever can write a directory on the way can swap the file
                # for a symlink to any file of ours, so, with strict, the
                # directory named and the one the file really is in count too.
                folders = [(d, os.stat(d)) for d in _folders(self.path)] if self._strict else []
                around = tuple(n for _, f in folders for n in stat_signature(f))
                # A stat never blocks and tells whether anything changed; the
                # signature kept is the one of the file actually read.
                if stat_signature(os.stat(self.path)) + around == self._signature:
                    return
                data, st = read_regular(self.path, MAX_PASSWORD_FILE_BYTES, "password file")
            except (OSError, ZsecError) as exc:
                self._refuse(_unreadable(self.path, exc), raise_errors)
                return
            problem = None
            if self._strict:
                opt_out = "PasswordFile(..., strict=False)"
                problem = mode_problem(st, self.path, "password file", opt_out)
                for folder, folder_st in folders:
                    problem = problem or mode_problem(
                        folder_st, folder, "password file directory", opt_out
                    )
            if problem is not None:
                self._refuse(problem, raise_errors)
                # The same file is not judged again until it or its directory
                # changes (a chmod or chown changes the signature).
                self._signature = stat_signature(st) + around
                return
            settled = time.time() - st.st_mtime >= _SETTLE_SECONDS
            complete = settled or data.endswith(b"\n") or not data
            ignored: list[int] = []
            entries = parse_passwords(data, complete=complete, ignored=ignored)
            if self._state.problem:
                log.warning("password file %s is usable again", self.path)
            self._publish(entries)
            # Until the file settles, keep looking: its last line may grow,
            # and a same-size rewrite within the file system's timestamp
            # tick would leave every stat field as it is now.
            self._signature = stat_signature(st) + around if settled else None
            self._say_findings(st, entries, ignored)
            log.debug("loaded %d user(s) from %s", len(entries), self.path)

    def _refuse(self, problem: str, raise_errors: bool) -> None:
        if raise_errors:
            raise FileAccessError(problem, filename=self.path)
        if problem != self._state.problem:
            log.warning("%s; nobody is admitted until it is fixed", problem)
        self._signature = None
        self._publish({}, problem)

    def _say_findings(
        self, st: os.stat_result, entries: dict[bytes, bytes], ignored: list[int]
    ) -> None:
        """Log, once per version of the file, what is legal but probably a mistake."""
        version = (stat_signature(st), tuple(ignored))
        if ignored and self._said_ignored != version:
            # Line numbers only: a line without '=' may well be a password.
            shown = ", ".join(map(str, ignored[:10])) + (", ..." if len(ignored) > 10 else "")
            log.warning(
                "password file %s: %d line(s) without 'name=' ignored (line %s)",
                self.path,
                len(ignored),
                shown,
            )
        self._said_ignored = version
        readable = bool(st.st_mode & 0o044) and any(
            len(e) == _DIGEST_BYTES for e in entries.values()
        )
        if readable and not self._said_readable:
            log.warning(
                "password file %s holds clear-text passwords and is readable by group or "
                "others (mode %04o); fix: chmod go-r %s, or hash them with zsec passwd",
                self.path,
                stat.S_IMODE(st.st_mode),
                self.path,
            )
        self._said_readable = readable


def _folders(path: str) -> list[str]:
    """The directory a path names and the one its file really is in (one if they are the same)."""
    named = os.path.dirname(os.path.abspath(path))
    real = os.path.dirname(os.path.realpath(path))
    return [named] if named == real else [named, real]


def _unreadable(path: str, exc: BaseException) -> str:
    """Say why a password file cannot be read, once, without repeating the path."""
    if isinstance(exc, FileAccessError) and exc.errno is None:
        return str(exc)  # not a regular file, or too large: already a full sentence
    number = getattr(exc, "errno", None)
    if number == errno.ENOENT:
        return f"password file {path} does not exist"
    if number == errno.ENOTDIR:
        return f"password file {path} does not exist (a part of the path is not a directory)"
    reason = os.strerror(number) if number else str(exc)
    return f"cannot read password file {path}: {reason[:1].lower()}{reason[1:]}"


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
