"""FailureLimiter: ban an address that fails authentication too often (brute-force throttling).

ZMTP's security notes recommend limiting failed attempts. Counting is per
peer address over a sliding window; a banned address is refused before its
credentials are looked at, so even the right password does not get in until
the ban ends. Time comes from an injectable clock.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable

from ._errors import LimitError, ZsecTypeError

log = logging.getLogger("zsec.auth")

#: Most addresses tracked at once; beyond it the oldest records are dropped.
MAX_TRACKED = 100_000


class FailureLimiter:
    """Refuse an address for ``ban`` seconds after ``max_failures`` failures within ``window``."""

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 60.0,
        ban: float = 300.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reconfigure(max_failures, window, ban)
        self._clock = clock
        self._failures: dict[bytes, deque[float]] = {}
        self._banned: dict[bytes, float] = {}
        self._next_sweep = 0.0
        # Failures to overlook per address (count, until): the one refused
        # reconnect of each connection the guard cut must not ban bystanders.
        # Keyed by (address, who): see excuse().
        self._excused: dict[tuple[bytes, bytes], tuple[int, float]] = {}
        self._ban_listeners: tuple[Callable[[bytes], None], ...] = ()
        self._end_listeners: tuple[Callable[[bytes], None], ...] = ()
        # Bans from elsewhere in a fleet (address -> end on this clock), replaced
        # as a whole by their feeder (zsec.EtcdBans); read here without a lock.
        self.shared_bans: dict[bytes, float] = {}

    def reconfigure(self, max_failures: int, window: float, ban: float) -> None:
        """Change the limits; bans and counts in progress are kept."""
        if not isinstance(max_failures, int) or isinstance(max_failures, bool):
            raise ZsecTypeError("max_failures must be an int")
        if max_failures < 1:
            raise LimitError("max_failures must be at least 1")
        if not (0 < window < math.inf) or not (0 < ban < math.inf):
            raise LimitError("window and ban must be positive, finite numbers of seconds")
        self.max_failures = max_failures
        self.window = float(window)
        self.ban = float(ban)

    def __repr__(self) -> str:
        return (
            f"<FailureLimiter {self.max_failures} failures / {self.window:g}s -> "
            f"ban {self.ban:g}s; banned={len(self._banned)}>"
        )

    def is_banned(self, address: bytes) -> bool:
        """True while ``address`` is banned; notices (and logs) a ban that has ended."""
        until = self._banned.get(address)
        if until is None:
            shared = self.shared_bans.get(address)
            return shared is not None and self._clock() < shared
        if self._clock() < until:
            return True
        self._end(address)
        return False

    def excuse(self, address: bytes, who: bytes = b"") -> None:
        """Overlook the next failure of ``who`` from ``address`` within ``window`` seconds.

        Once per call. The live-revocation guard calls it for each
        connection it cuts: the cut client's one refused reconnect is not the
        address's fault. ``who`` (a PLAIN username, a raw CURVE key) limits
        the excuse to failures of that identity, so a cut client that never
        redials leaves no free guess at other users; b"" excuses any failure.
        """
        now = self._clock()
        key = (address, who)
        count, until = self._excused.get(key, (0, 0.0))
        if until <= now:
            count = 0
        if len(self._excused) >= MAX_TRACKED and key not in self._excused:
            self._excused.pop(next(iter(self._excused)))
        self._excused[key] = (count + 1, now + self.window)

    def on_ban(self, listener: Callable[[bytes], None]) -> Callable[[], None]:
        """Call ``listener(address)`` when a ban starts; returns a function that unsubscribes."""
        self._ban_listeners = (*self._ban_listeners, listener)

        def unsubscribe() -> None:
            self._ban_listeners = tuple(x for x in self._ban_listeners if x is not listener)

        return unsubscribe

    def on_ban_end(self, listener: Callable[[bytes], None]) -> Callable[[], None]:
        """Call ``listener(address)`` when a ban ends; returns a function that unsubscribes."""
        self._end_listeners = (*self._end_listeners, listener)

        def unsubscribe() -> None:
            self._end_listeners = tuple(x for x in self._end_listeners if x is not listener)

        return unsubscribe

    def failed(self, address: bytes, who: bytes = b"") -> None:
        """Record one failed attempt (of ``who``, see ``excuse``); bans at the limit."""
        now = self._clock()
        for key in ((address, who), (address, b"")) if who else ((address, b""),):
            excused = self._excused.pop(key, None)
            if excused is not None and excused[1] > now:
                if excused[0] > 1:
                    self._excused[key] = (excused[0] - 1, excused[1])
                return
        attempts = self._failures.get(address)
        if attempts is None:
            if len(self._failures) >= MAX_TRACKED:
                self._failures.pop(next(iter(self._failures)))
            attempts = self._failures[address] = deque()
        attempts.append(now)
        while attempts and attempts[0] <= now - self.window:
            attempts.popleft()
        if len(attempts) >= self.max_failures:
            del self._failures[address]
            if len(self._banned) >= MAX_TRACKED:
                self._end(next(iter(self._banned)))  # the oldest ban ends early
            self._banned[address] = now + self.ban
            log.warning(
                "banning address %s for %gs after %d failed attempts within %gs",
                _show(address),
                self.ban,
                self.max_failures,
                self.window,
            )
            for listener in self._ban_listeners:
                try:
                    listener(address)
                except Exception:  # a listener must not break the count
                    log.exception("ban listener failed")
        if now >= self._next_sweep:
            self.sweep()

    def sweep(self) -> None:
        """Forget stale failures and end expired bans (each end is logged)."""
        now = self._clock()
        self._next_sweep = now + min(self.window, 1.0)
        for address in [a for a, until in self._banned.items() if until <= now]:
            self._end(address)
        for address in [
            a for a, q in self._failures.items() if not q or q[-1] <= now - self.window
        ]:
            del self._failures[address]
        for key in [k for k, (_, until) in list(self._excused.items()) if until <= now]:
            del self._excused[key]

    @property
    def banned(self) -> list[bytes]:
        """Addresses banned right now."""
        now = self._clock()
        return [a for a, until in list(self._banned.items()) if until > now]

    def _end(self, address: bytes) -> None:
        if self._banned.pop(address, None) is not None:
            log.warning("ban on address %s ended", _show(address))
            for listener in self._end_listeners:
                try:
                    listener(address)
                except Exception:  # a listener must not break the sweep
                    log.exception("ban listener failed")


def _show(address: bytes) -> str:
    return address[:64].decode("ascii", "backslashreplace")
