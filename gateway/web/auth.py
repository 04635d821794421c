"""Console sessions (server-side, in memory: a restart logs everybody out) and the login
throttle (failed logins slowed, then locked for a while)."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

IDLE_SECONDS = 30 * 60
MAX_AGE_SECONDS = 12 * 3600
MAX_SESSIONS = 1000  # bound on memory; the oldest go first

FREE_FAILURES = 3  # failures before logins are slowed
DELAY_STEP_SECONDS = 1.0  # added per failure past the free ones
MAX_DELAY_SECONDS = 5.0
LOCK_AFTER = 6  # failures within WINDOW_SECONDS that lock the name (or the client address)
LOCK_SECONDS = 15 * 60
WINDOW_SECONDS = 15 * 60
MAX_TRACKED = 10_000  # names and addresses followed at once


@dataclass
class Session:
    token: str
    account: str
    role: str
    csrf: str
    created: float
    seen: float

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def csrf_matches(self, token: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), token.encode())


@dataclass
class Sessions:
    clock: Callable[[], float] = time.monotonic
    _by_token: dict[str, Session] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, account: str, role: str) -> Session:
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), account, role, secrets.token_urlsafe(32),
                          now, now)
        with self._lock:
            if len(self._by_token) >= MAX_SESSIONS:
                oldest = min(self._by_token.values(), key=lambda s: s.seen)
                del self._by_token[oldest.token]
            self._by_token[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session for ``token`` (its idle time restarts), or None."""
        if not token:
            return None
        now = self.clock()
        with self._lock:
            session = self._by_token.get(token)
            if session is None:
                return None
            if now - session.seen > IDLE_SECONDS or now - session.created > MAX_AGE_SECONDS:
                del self._by_token[token]
                return None
            session.seen = now
            return session

    def close(self, token: str) -> None:
        with self._lock:
            self._by_token.pop(token, None)

    def close_account(self, account: str) -> None:
        """An account removed or changed: its sessions end."""
        with self._lock:
            for token in [t for t, s in self._by_token.items() if s.account == account]:
                del self._by_token[token]


@dataclass
class _Failures:
    times: list[float] = field(default_factory=list)
    locked_until: float = 0.0


@dataclass
class LoginThrottle:
    """Failed logins by account name and by client address: each failure past FREE_FAILURES
    delays the next answer; LOCK_AFTER failures lock for LOCK_SECONDS (answered 429)."""

    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, _Failures] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def locked_for(self, keys: tuple[str, ...]) -> float:
        """Seconds until a login with these keys may be tried again (0: now)."""
        now = self.clock()
        with self._lock:
            return max((f.locked_until - now for k in keys
                        if (f := self._failures.get(k)) is not None), default=0.0) if keys else 0.0

    def delay(self, keys: tuple[str, ...]) -> float:
        """How long to hold back the answer to the next attempt with these keys."""
        now = self.clock()
        with self._lock:
            recent = max((len(self._recent(f, now)) for k in keys
                          if (f := self._failures.get(k)) is not None), default=0)
        return min(MAX_DELAY_SECONDS, max(0, recent - FREE_FAILURES + 1) * DELAY_STEP_SECONDS)

    def failed(self, keys: tuple[str, ...]) -> None:
        now = self.clock()
        with self._lock:
            if len(self._failures) >= MAX_TRACKED:
                self._forget_quiet(now)
            for key in keys:
                failures = self._failures.setdefault(key, _Failures())
                failures.times = [*self._recent(failures, now), now]
                if len(failures.times) >= LOCK_AFTER:
                    failures.locked_until = now + LOCK_SECONDS
                    failures.times = []

    def succeeded(self, keys: tuple[str, ...]) -> None:
        with self._lock:
            for key in keys:
                failures = self._failures.get(key)
                if failures is not None and failures.locked_until <= self.clock():
                    del self._failures[key]

    @staticmethod
    def _recent(failures: _Failures, now: float) -> list[float]:
        return [t for t in failures.times if now - t < WINDOW_SECONDS]

    def _forget_quiet(self, now: float) -> None:
        for key in [k for k, f in self._failures.items()
                    if f.locked_until <= now and not self._recent(f, now)]:
            del self._failures[key]
        while len(self._failures) >= MAX_TRACKED:  # still full: the oldest first
            del self._failures[next(iter(self._failures))]


def throttle_keys(name: str, client: str) -> tuple[str, ...]:
    return (f"name:{name.lower()}", f"client:{client}")
