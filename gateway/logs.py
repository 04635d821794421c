"""Logging: structlog, JSON lines off a terminal, readable lines on one, never patient data.

Every event passes an allow-list processor: fields not named in ``ALLOWED_FIELDS`` are dropped
(their names are kept in ``dropped_fields`` so a mistake is visible in review), so a dataset
value cannot reach a log by accident. Exceptions are logged by class name, never with their
message or traceback (either may quote a value). Third-party libraries (pynetdicom, pydicom)
quote dataset values in their messages, so only their known-safe messages pass, verbatim;
others are reduced to the logger's name and level.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import MutableMapping
from typing import Any

import structlog

ALLOWED_FIELDS = frozenset({
    # structlog's own
    "event", "level", "timestamp", "logger",
    # what the gateway says about an instance or an association: identifiers it made itself,
    # network peers, outcomes and sizes
    "sop_instance_uid", "entry_id", "quarantine_id", "calling_ae", "called_ae", "peer",
    "destination", "status", "reason", "error", "size", "duration_ms", "count", "pending",
    "attempt", "delay_s", "ae_title", "host", "port", "destinations", "files_in", "written",
    "quarantined", "skipped", "duplicates", "where", "address", "library_logger",
    "dropped_fields", "pid", "exit_code",
    "from_syntax", "to_syntax",  # transfer syntax names (a conversion on the way out)
    "profile", "attributes",  # a profile's name and the keywords its edits keep (configuration)
})
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
FORMATS = ("auto", "json", "console")
# pynetdicom messages that carry no dataset values, passed on as they are.
_SAFE_LIBRARY_MESSAGES = re.compile(
    r"^(Association (Aborted|Rejected|Released|Accepted)|No accepted presentation contexts"
    r"|Received unexpected .* service message|Connection closed|Network timeout reached"
    r"|DIMSE timeout reached|ACSE timeout reached|Unable to connect to remote"
    r"|Association request failed|Result: .*|Reason: .*)",
)


def keep_allowed_fields(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    dropped = sorted(k for k in event_dict if k not in ALLOWED_FIELDS)
    for key in dropped:
        del event_dict[key]
    if dropped:
        event_dict["dropped_fields"] = dropped
    return event_dict


class _LibraryHandler(logging.Handler):
    """Sends third-party log records through structlog, keeping only safe messages."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = ""
        event = message if _SAFE_LIBRARY_MESSAGES.match(message) else "library message withheld"
        # If standard error is gone (closed at exit), drop the line: it must never break a store.
        with contextlib.suppress(OSError, ValueError):
            structlog.get_logger("library").log(record.levelno, event, library_logger=record.name)


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Set up structlog and route library logging through it (idempotent)."""
    numeric = LEVELS[level]
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            keep_allowed_fields,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Looked up at each use, not now: standard error may be replaced later (tests, daemons).
        logger_factory=lambda *_: structlog.WriteLogger(file=sys.stderr),  # a line, one write
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _LibraryHandler):
            root.removeHandler(handler)
    root.addHandler(_LibraryHandler())
    root.setLevel(logging.WARNING)
    # pynetdicom's INFO/DEBUG output describes requests in detail: never below WARNING.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # pydicom reports invalid values by quoting them; they are not needed in our logs.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    # ... and as Python warnings, printed to standard error with the value in them.
    warnings.simplefilter("ignore")


def reset() -> None:
    """Undo ``configure`` (for tests that run commands in-process)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _LibraryHandler):
            root.removeHandler(handler)
    structlog.reset_defaults()


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
