"""Structured logging on stderr (structlog): JSON lines for machines, or readable console
lines for a person at a terminal (chosen by ``STOCKGUARD_LOG_JSON``, by default from
whether stderr is a terminal)."""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging", "get_logger", "wants_json"]

_SECRET_KEYS = frozenset({"authorization", "key", "api_key", "secret", "password", "database_url"})


def _drop_secrets(
    _logger: object, _name: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    for k in list(event):
        if k.lower() in _SECRET_KEYS:
            event[k] = "***"
    return event


class _Stderr:
    """Whatever ``sys.stderr`` is at the time of writing (it may be replaced later)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _stderr_is_a_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(callable(isatty) and isatty())


def wants_json(json: bool | None) -> bool:
    """``json`` as configured; unset (None): JSON unless stderr is a terminal."""
    return (not _stderr_is_a_terminal()) if json is None else json


def configure_logging(level: str = "INFO", json: bool | None = True) -> None:
    """Log at ``level`` and above; ``json=None`` chooses by :func:`wants_json`."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if wants_json(json)
        else structlog.dev.ConsoleRenderer(colors=_stderr_is_a_terminal())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
