"""Server logging: one configuration for uvicorn, edgeopt and the access log, as text or JSON lines.

``log_config`` is the ``logging.config.dictConfig`` that ``serve`` hands to uvicorn (which applies
it in every worker process). The access log is edgeopt's own (``edgeopt.access``, written by
``guard.Guard`` with the request id), so uvicorn's is turned off.
"""
from __future__ import annotations

import json
import logging
import time

LEVELS = ("critical", "error", "warning", "info", "debug")
# LogRecord attributes that are not "extra" fields
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and any extra fields
    (the access log's request_id, method, path, status, duration_ms, client)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def check_level(level: str) -> str:
    """The level in lower case; a ConfigError naming the choices for anything else."""
    from ..errors import ConfigError

    if level.lower() not in LEVELS:
        raise ConfigError(f"--log-level {level}: choose one of {', '.join(LEVELS)}")
    return level.lower()


def log_config(level: str = "info", fmt: str = "text") -> dict:
    level = level.upper()
    formatter = ({"()": "edgeopt.serve.logs.JsonFormatter"} if fmt == "json" else
                 {"format": "%(asctime)s %(levelname)s %(message)s"})
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "edgeopt": {"handlers": ["default"], "level": level, "propagate": False},
        },
    }
