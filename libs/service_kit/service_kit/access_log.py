"""Access logs that a hot RPC can afford.

One JSON line per call cost about 3% of the tracker's CPU and 103 MB per 432k calls. So: a call
that failed or was slow (at least `slow_ms`) is always logged; of the fast successful calls of
a method, every `1/sample`-th is (a counter, not a random draw: the same load logs the same
share, and its lines say how many calls each one stands for); and every `summary_s` seconds
one line per method says what the window held (calls, errors, p50/p99/max latency), so the
calls not logged are still accounted for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc

log = logging.getLogger("neural.rpc")

# Latencies kept per method and window for the summary's percentiles: past this many, a new
# one replaces an old one (exact up to it, an even sample of the window beyond).
KEPT = 4096


class _Window:
    __slots__ = ("calls", "errors", "fast", "kept", "max_s")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.fast = 0  # fast successful calls ever (the sampling counter: it survives windows)
        self.max_s = 0.0
        self.kept: list[float] = []

    def add(self, seconds: float, ok: bool) -> None:
        self.calls += 1
        if not ok:
            self.errors += 1
        if seconds > self.max_s:
            self.max_s = seconds
        if len(self.kept) < KEPT:
            self.kept.append(seconds)
        else:
            self.kept[self.calls % KEPT] = seconds

    def reset(self) -> None:
        self.calls = self.errors = 0
        self.max_s = 0.0
        self.kept = []


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 2)


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class AccessLog:
    """Decides which calls are logged, and writes the summaries."""

    def __init__(
        self,
        slow_ms: int = 500,
        sample: float = 0.01,
        summary_s: float = 60,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self.slow_s = slow_ms / 1e3
        # every n-th fast successful call; 0: none of them
        self.every = 0 if sample <= 0 else max(1, round(1 / sample))
        self.summary_s = summary_s
        self.clock = clock
        self.log = logger
        self._windows: dict[str, _Window] = {}
        self._started = clock()

    def record(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        window = self._windows.get(method)
        if window is None:
            window = self._windows[method] = _Window()
        ok = code is grpc.StatusCode.OK
        window.add(seconds, ok)
        if not ok or seconds >= self.slow_s:
            fields = {"method": method, "code": code.name, "ms": _ms(seconds)}
            if seconds >= self.slow_s:
                fields["slow"] = True
            self.log.info("rpc", extra={"fields": fields})
        else:
            window.fast += 1
            if self.every and window.fast % self.every == 0 and self.log.isEnabledFor(logging.INFO):
                self.log.info(
                    "rpc",
                    extra={
                        "fields": {
                            "method": method,
                            "code": code.name,
                            "ms": _ms(seconds),
                            "sampled": self.every,  # this line stands for `every` calls
                        }
                    },
                )
        if self.summary_s:
            now = self.clock()
            if now - self._started >= self.summary_s:
                self.summarize(now)

    def summarize(self, now: float | None = None) -> None:
        """One line per method called since the last summary; the window starts over."""
        now = self.clock() if now is None else now
        span = round(now - self._started, 1)
        self._started = now
        for method, window in self._windows.items():
            if not window.calls:
                continue
            ordered = sorted(window.kept)
            self.log.info(
                "rpc summary",
                extra={
                    "fields": {
                        "method": method,
                        "seconds": span,
                        "calls": window.calls,
                        "errors": window.errors,
                        "p50_ms": _ms(_percentile(ordered, 0.5)),
                        "p99_ms": _ms(_percentile(ordered, 0.99)),
                        "max_ms": _ms(window.max_s),
                    }
                },
            )
            window.reset()


__all__ = ["AccessLog"]
