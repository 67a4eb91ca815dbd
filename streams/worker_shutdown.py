"""A Faust worker whose stop on SIGTERM/SIGINT is bounded in time.

On the signal the posts agent is told to drain (finish the batch in hand, take no
more), Faust's own shutdown starts, and a watchdog thread is armed: if the process is
still alive ``drain_s`` plus a grace period later (a library hanging in its shutdown),
the watchdog logs what was left uncommitted and ends the process with exit code 3.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import faust

from streams.health import WorkerHealth

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 15.0
"""Time Faust gets after the drain limit to commit offsets and leave the group."""
EXIT_DRAIN_TIMEOUT = 3


class DrainingWorker(faust.Worker):
    """``faust.Worker`` with a bounded drain on SIGTERM and SIGINT."""

    def __init__(self, app: faust.App, health: WorkerHealth, drain_s: float, **kwargs: Any):
        super().__init__(app, **kwargs)
        self.health = health
        self.drain_s = drain_s
        self._watchdog: threading.Timer | None = None

    def install_signal_handlers(self) -> None:
        super().install_signal_handlers()
        # replace mode's handlers with ones that start the drain first, then call them
        self.loop.add_signal_handler(signal.SIGTERM, self._drain_then, self._on_sigterm)
        self.loop.add_signal_handler(signal.SIGINT, self._drain_then, self._on_sigint)

    def _drain_then(self, stop: Any) -> None:
        if self._watchdog is None:
            log.info(
                "stop requested: draining %s for at most %.0f s",
                self.health.describe_in_flight(),
                self.drain_s,
            )
            self.health.begin_drain(self.drain_s)
            self._watchdog = threading.Timer(self.drain_s + SHUTDOWN_GRACE_S, self._give_up)
            self._watchdog.daemon = True
            self._watchdog.start()
        stop()

    def _give_up(self) -> None:
        log.error(
            "shutdown did not finish within %.0f s; exiting with %s uncommitted "
            "(it is redelivered to the next worker)",
            self.drain_s + SHUTDOWN_GRACE_S,
            self.health.describe_in_flight(),
        )
        logging.shutdown()
        os._exit(EXIT_DRAIN_TIMEOUT)
