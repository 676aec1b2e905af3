"""Measuring what a step costs in memory: the process's peak resident set size, sampled in a
background thread (used by the harness for each edit, by DPO for its training, and by
``benchmarks.perf``)."""

from __future__ import annotations

import threading
from typing import Any, Optional

from .extras import require


class PeakRSS:
    """Context manager sampling this process's RSS every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.005):
        psutil = require("psutil", "harness", "measuring memory (PeakRSS)")
        self._proc = psutil.Process()
        self.interval = interval
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _rss(self) -> float:
        return self._proc.memory_info().rss / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self._rss())

    def __enter__(self) -> "PeakRSS":
        self.start_mb = self.peak_mb = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss())
