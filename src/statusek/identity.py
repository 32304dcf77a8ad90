"""Who this process is: shown in the management UI and on every log line."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cache
from importlib import metadata

import statusek


@cache
def version() -> str:
    try:
        return metadata.version("statusek")
    except metadata.PackageNotFoundError:
        return statusek.__version__


@dataclass(frozen=True, slots=True)
class Identity:
    role: str
    host: str
    pid: int

    @classmethod
    def current(cls, role: str) -> Identity:
        return cls(role, socket.gethostname(), os.getpid())

    @property
    def connection_name(self) -> str:
        """`statusek worker host:pid`: tells replicas apart in the management UI."""
        return f"statusek {self.role} {self.host}:{self.pid}"
