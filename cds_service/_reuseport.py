"""Per-worker listening sockets with ``SO_REUSEPORT``: the kernel spreads new connections.

The third process model of ``serve --workers N`` (``[service] reuse_port = true``), beside
the connection balancer (``cds_service._balancer``, the default) and uvicorn's shared
accept (``balance_connections = false``). Each worker binds its own socket to the service's
address with ``SO_REUSEPORT`` and listens on it; Linux then assigns each new connection to
one of the listening sockets by a hash of its addresses. Nothing is handed over, but the
spread is random, not by load: docs/performance.md has the measurement that decided the
default.

- ``bind_reuseport(host, port)``: the supervisor's socket, bound (not listening) with
  ``SO_REUSEPORT`` so that the workers can bind the same address.
- ``reuseport_loop``: the worker side, an event-loop factory for uvicorn's ``loop`` setting
  whose ``create_server`` listens on a socket of its own instead of the inherited one.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["REUSEPORT_LOOP", "bind_reuseport", "reuseport_loop", "supported"]

REUSEPORT_LOOP = "cds_service._reuseport:reuseport_loop"


def supported() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def _socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def bind_reuseport(host: str, port: int) -> socket.socket:
    """The supervisor's socket: bound with ``SO_REUSEPORT``, inheritable, never listening
    (only listening sockets receive connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = _socket(family)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class _ReusePortCreateServer:
    async def create_server(self, protocol_factory: Callable[[], asyncio.BaseProtocol],
                            host: Any = None, port: Any = None, *,
                            sock: socket.socket | None = None, **kwargs: Any) -> Any:
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            own = _socket(sock.family)
            own.bind(sock.getsockname()[:2])
            own.setblocking(False)
            sock.close()  # this worker listens on its own socket, never the inherited one
            sock = own
        return await super().create_server(  # type: ignore[misc]
            protocol_factory, host, port, sock=sock, **kwargs)


try:
    from uvloop import Loop as _BaseLoop
except ImportError:  # pragma: no cover - uvloop is in the service extra
    from asyncio import SelectorEventLoop as _BaseLoop  # type: ignore[assignment]


class _ReusePortLoop(_ReusePortCreateServer, _BaseLoop):  # type: ignore[misc]
    pass


def reuseport_loop() -> asyncio.AbstractEventLoop:
    """uvicorn ``loop`` factory for the workers: uvloop (or asyncio) whose server listens
    on a ``SO_REUSEPORT`` socket of its own."""
    return _ReusePortLoop()
