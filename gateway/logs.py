"""structlog set-up: JSON lines for journald when not on a terminal, readable on a terminal.

Processors are plain functions (structlog's model); tests use
``structlog.testing.capture_logs()`` instead of mocking the logger.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

import structlog


def configure(stream: TextIO | None = None, *, json: bool | None = None, level: str = "") -> None:
    """Send logs to ``stream`` (default stderr); JSON unless the stream is a terminal."""
    out = stream or sys.stderr
    use_json = (not out.isatty()) if json is None else json
    name = (level or os.environ.get("ALARMGW_LOG_LEVEL", "info")).upper()
    threshold = logging.getLevelNamesMapping().get(name, logging.INFO)
    global _threshold  # noqa: PLW0603 - mirrors structlog's global configuration
    _threshold = threshold
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


_threshold = logging.INFO  # until configure() says otherwise (structlog's default: all)


def enabled(level: int) -> bool:
    """Whether a record at ``level`` would be written: lets a hot path skip building a
    line nobody will see."""
    return level >= _threshold
