"""The last resort for an output that no sink took: a local JSONL file, rotated.

Used when a dead letter (or a trend event) cannot be published even after its retries
and with its original bytes dropped. Each line is one JSON object: what it was, its key,
its value, why it was spilled, and when. Rotation is the standard library's
``RotatingFileHandler`` (size-bounded files ``spill.jsonl``, ``spill.jsonl.1``, ...).
"""

from __future__ import annotations

import base64
import json
import logging
import logging.handlers
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)


class SpillFile:
    """Appends records that could not be written anywhere else; bounded on disk."""

    def __init__(self, path: Path, max_bytes: int = 64 * 1024 * 1024, backups: int = 5) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._lock = threading.Lock()
        self.records = 0

    def write(self, kind: str, key: bytes | None, value: bytes, error: str) -> None:
        """Append one record (``value`` as text when it is UTF-8, else base64)."""
        try:
            text, encoding = value.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(value).decode("ascii"), "base64"
        line = json.dumps(
            {
                "kind": kind,
                "key": key.decode("utf-8", "replace") if key is not None else None,
                "value": text,
                "value_encoding": encoding,
                "error": error[:2000],
                "spilled_at_ms": int(time.time() * 1000),
            },
            ensure_ascii=False,
        )
        record = logging.LogRecord("postpulse.spill", logging.ERROR, "", 0, line, None, None)
        with self._lock:
            self._handler.emit(record)
            self._handler.flush()
            self.records += 1

    def close(self) -> None:
        """Flush and close the current file."""
        self._handler.close()
