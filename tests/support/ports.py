"""A free TCP port on 127.0.0.1 for a server or a process group started by a test or a benchmark."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on right now (bound and released: another process may still take it before use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
