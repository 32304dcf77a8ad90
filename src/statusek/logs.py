"""structlog set up once: context variables first, JSON when not on a terminal.

Libraries that log through the standard library (aio-pika, aiormq, asyncpg)
are rendered by the same processors, so every line has the same shape: the
process's identity (host, pid, version, vhost, broker host) on every line, and
no password anywhere, whatever a library put in its message.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import structlog

from statusek.redact import mask_secrets


def _static(context: Mapping[str, Any]) -> structlog.types.Processor:
    def add(_logger: Any, _method: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
        for key, value in context.items():
            event_dict.setdefault(key, value)
        return event_dict

    return add


def _mask_passwords(
    _logger: Any, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    for key, value in event_dict.items():
        if isinstance(value, str) and "://" in value:
            event_dict[key] = mask_secrets(value)
        elif isinstance(value, BaseException | dict | list | tuple):
            # Rendered later as text; mask that text now.
            masked = mask_secrets(str(value))
            if masked != str(value):
                event_dict[key] = masked
    return event_dict


def configure(level: str = "INFO", fmt: str = "auto", context: Mapping[str, Any] | None = None) -> None:
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _static(context or {}),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, _mask_passwords, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _mask_passwords,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Library chatter below WARNING is noise at our level of detail.
    root.setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
