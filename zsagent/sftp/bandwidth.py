"""A token bucket that caps a byte rate, shared by every thread and connection of one upload."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Allows ``rate_bytes_per_s`` on average and bursts of at most ``burst_bytes``.

    ``take(n)`` reserves ``n`` bytes and sleeps until the bucket has paid for them; a request larger
    than the burst is allowed and leaves the bucket in debt, so the average rate holds for any size.
    Reservations are first come, first served: concurrent callers queue behind each other's debt.
    """

    def __init__(self, rate_bytes_per_s: float, burst_bytes: int,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate_bytes_per_s <= 0 or burst_bytes <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate_bytes_per_s = float(rate_bytes_per_s)
        self.burst_bytes = burst_bytes
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(burst_bytes)
        self._stamp = clock()

    def reserve(self, n: int) -> float:
        """Take ``n`` bytes now; return the seconds to wait before using them (0 when none)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst_bytes, self._tokens + (now - self._stamp) * self.rate_bytes_per_s)
            self._stamp = now
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_bytes_per_s

    def take(self, n: int) -> None:
        delay = self.reserve(n)
        if delay > 0:
            self._sleep(delay)


def bucket_for(rate_bytes_per_s: int | None, request_bytes: int) -> TokenBucket | None:
    """The bucket for an upload: bursts of one request or 50 ms of traffic, whichever is larger."""
    if rate_bytes_per_s is None:
        return None
    return TokenBucket(rate_bytes_per_s, max(request_bytes, rate_bytes_per_s // 20))
