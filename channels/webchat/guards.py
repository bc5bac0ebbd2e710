"""Request guards shared by the widget and the console: Origin checks and rate limits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection


def origin_of(url: str) -> str | None:
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def own_origin(connection: HTTPConnection) -> str | None:
    """The origin the browser used to reach this server (from the Host header)."""
    host = connection.headers.get("host")
    if not host:
        return None
    scheme = connection.url.scheme
    http_scheme = "https" if scheme in ("https", "wss") else "http"
    return f"{http_scheme}://{host.lower()}"


def origin_allowed(connection: HTTPConnection, allowed: Iterable[str]) -> bool:
    """True when the request's Origin is this server's own or one of ``allowed``.

    A missing Origin is refused: every browser sends one on WebSocket handshakes and
    on cross-site POSTs, so its absence means a client we do not serve here.
    """
    origin = connection.headers.get("origin")
    if not origin:
        return False
    given = origin_of(origin)
    if given is None:
        return False
    accepted = {o for o in (origin_of(a) for a in allowed) if o}
    mine = own_origin(connection)
    if mine:
        accepted.add(mine)
    return given in accepted


class RateLimiter:
    """A token bucket per key: ``per_minute`` sustained, ``burst`` at once."""

    def __init__(
        self,
        per_minute: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.rate = max(per_minute, 1.0) / 60.0
        self.burst = burst if burst is not None else max(3.0, per_minute / 3.0)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._max_keys = max_keys

    def allow(self, key: str) -> bool:
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(self._buckets) >= self._max_keys and key not in self._buckets:
            self._prune(now)
        self._buckets[key] = (tokens, now)
        return allowed

    def _prune(self, now: float) -> None:
        full_after = self.burst / self.rate
        for key, (_, last) in list(self._buckets.items()):
            if now - last >= full_after:
                del self._buckets[key]
