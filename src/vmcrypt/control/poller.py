"""A check run in a background thread every few seconds: what both monitors are.

:class:`~vmcrypt.control.monitor.HostMonitor` (hosts' health, reconnects) and
:class:`~vmcrypt.control.provider_monitor.ProviderMonitor` (key providers' health)
differ in what one pass checks; starting, stopping and surviving a bad pass are the
same and live here.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod

__all__ = ["Poller"]

logger = logging.getLogger("vmcrypt.control.monitor")


class Poller(ABC):
    """Runs :meth:`check_once` at once, then every ``interval`` seconds, until stopped."""

    #: Names the poller in its thread and its log lines ("host monitor").
    what: str = "poller"

    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"the {self.what} interval must be positive")
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def check_once(self) -> object:
        """One pass."""

    def start(self) -> None:
        """Run in a daemon thread, first at once, then every ``interval`` seconds."""
        if self._thread is not None:
            raise RuntimeError(f"the {self.what} is already running")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"vmcrypt-{self.what.replace(' ', '-')}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop and wait (up to ``timeout``) for a pass under way to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_once()
            except Exception as exc:  # the poller must outlive a bad pass
                logger.error("%s pass failed (%s)", self.what, type(exc).__name__)
            self._stop.wait(self.interval)
