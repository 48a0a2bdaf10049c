"""structlog set-up: JSON lines for journald when not on a terminal, readable on a terminal.

Everything goes through the same renderer: our structlog loggers, and the standard
``logging`` records of libraries and Python ``warnings`` (gpiozero's ``PinFactoryFallback``,
a ``DeprecationWarning``), which ``logging.captureWarnings`` turns into records of the
``py.warnings`` logger and structlog's ``ProcessorFormatter`` renders. No raw text line
reaches the journal.

When the stream is connected to the journal (systemd sets ``JOURNAL_STREAM`` to its device
and inode), each line starts with its syslog priority in sd-daemon form (``<4>`` warning,
``<3>`` error, ...), which journald takes as the line's priority (``SyslogLevelPrefix=yes``,
the default): ``journalctl -p warning -u alarmgw`` then shows only warnings and worse. A pipe
elsewhere (``alarmgw run | jq``, tests) gets plain JSON lines.

Processors are plain functions (structlog's model); tests use
``structlog.testing.capture_logs()`` instead of mocking the logger.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# sd-daemon(3) / syslog(3) priorities of structlog's level names.
PRIORITY = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
# Libraries log through the standard logging module; below this they are not worth a line.
LIBRARY_FLOOR = logging.WARNING


def to_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is the journal's stream of this service (``JOURNAL_STREAM``)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class Prefixed:
    """A renderer whose lines start with the syslog priority of their level (``<4>``)."""

    def __init__(self, renderer: structlog.typing.Processor) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
        level = str(event_dict.get("level", method_name)).lower()
        line = self.renderer(logger, method_name, event_dict)
        text = line.decode() if isinstance(line, bytes) else str(line)
        return f"<{PRIORITY.get(level, 6)}>{text}"


def _one_line(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> Any:
    # A captured warning's text is "file:line: Category: message\n  source line\n".
    event = event_dict.get("event")
    if isinstance(event, str) and "\n" in event:
        event_dict["event"] = event.strip().splitlines()[0]
    return event_dict


_handler: logging.Handler | None = None  # ours on the root logger, replaced on reconfigure


def configure(stream: TextIO | None = None, *, json: bool | None = None, level: str = "") -> None:
    """Send logs to ``stream`` (default stderr); JSON unless the stream is a terminal."""
    out = stream or sys.stderr
    use_json = (not out.isatty()) if json is None else json
    name = (level or os.environ.get("ALARMGW_LOG_LEVEL", "info")).upper()
    threshold = logging.getLevelNamesMapping().get(name, logging.INFO)
    global _threshold, _handler  # noqa: PLW0603 - mirrors structlog's global configuration
    _threshold = threshold
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    if to_journal(out):
        renderer = Prefixed(renderer)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )

    # Standard logging (libraries) and warnings: one handler on the root logger, rendered
    # like our own lines, with the logger's name.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, _one_line],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(max(threshold, LIBRARY_FLOOR))
    _handler = handler
    logging.captureWarnings(True)


_threshold = logging.INFO  # until configure() says otherwise (structlog's default: all)


def enabled(level: int) -> bool:
    """Whether a record at ``level`` would be written: lets a hot path skip building a
    line nobody will see."""
    return level >= _threshold
