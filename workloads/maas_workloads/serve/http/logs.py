"""Structured logs: one JSON object per line on stderr, fields passed with `extra=`."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import BinaryIO, Final

import orjson

# Fields every record has, and uvicorn's ANSI-coloured duplicate of the message.
_SKIPPED: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _SKIPPED:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


class AccessLog:
    """One JSON line per request, in the same shape as JsonFormatter's, written in batches.

    At thousands of requests per second, going through `logging` (a record, a lock, a
    formatter and a write call per line) costs a third of the server's throughput; here a
    line is one orjson call and the buffer is written every `interval` seconds or when full.
    """

    def __init__(self, stream: BinaryIO | None = None, interval: float = 0.1, limit: int = 1 << 16) -> None:
        self._stream = stream if stream is not None else sys.stderr.buffer
        self._interval = interval
        self._limit = limit
        self._lines: list[bytes] = []
        self._size = 0
        self._second = -1
        self._stamp = ""

    def record(self, fields: dict[str, object]) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # formatting the date is most of a line's cost: once a second
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        entry = {
            "time": f"{self._stamp}.{int((now - second) * 1000):03d}Z",
            "level": "info",
            "logger": "maas.access",
            "message": "request",
            **fields,
        }
        line = orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._limit:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            data, self._lines, self._size = b"".join(self._lines), [], 0
            self._stream.write(data)
            self._stream.flush()

    async def run(self) -> None:
        """Flush periodically until cancelled; flushes what is left on the way out."""
        try:
            while True:
                await asyncio.sleep(self._interval)
                self.flush()
        finally:
            self.flush()
