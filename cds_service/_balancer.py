"""Even spread of client connections over the service's worker processes.

With ``--workers N`` uvicorn lets every worker accept on one shared listening socket, and
whichever worker wakes first takes every connection waiting. EHRs (and load generators)
keep a few long-lived keep-alive connections, so a 11/5 split of 16 connections leaves one
core with twice the queue of the other for as long as the connections live: its calls wait
twice as long while the other core idles (docs/performance.md).

Here the supervisor process accepts instead and hands each connection (its file descriptor,
over a Unix socket) to the worker with the fewest open connections; a worker reports each
connection it closes. Workers register once warmed up, and unregister when they stop, so a
connection never goes to a worker that cannot answer it. Only connection set-up passes
through the supervisor; requests go straight to the worker.

- ``ConnectionBalancer``: the supervisor side, a thread next to uvicorn's ``Multiprocess``.
- ``balanced_loop``: the worker side, an event-loop factory for uvicorn's ``loop`` setting.
  Its ``create_server`` takes connections from the balancer instead of ``accept()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import selectors
import shutil
import socket
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BALANCED_LOOP", "BALANCER_ENV", "ConnectionBalancer", "balanced_loop", "supported"]

log = logging.getLogger("movement_cds.service")

BALANCER_ENV = "MOVEMENT_CDS_BALANCER"
"""Path of the supervisor's Unix socket; set for the workers it starts."""

BALANCED_LOOP = "cds_service._balancer:balanced_loop"
"""uvicorn's ``loop`` setting for the workers."""

_PENDING_LIMIT = 1024  # connections held while no worker is ready; the oldest are closed
_CLOSED = b"-"  # a worker closed one connection
_HELLO_END = b"\n"  # b"p<pid>\n": a worker is ready


def supported() -> bool:
    """Passing descriptors needs Unix sockets with SCM_RIGHTS (Linux, macOS)."""
    return hasattr(socket, "send_fds") and hasattr(socket, "AF_UNIX")


# --- supervisor side ------------------------------------------------------------------------


@dataclass(eq=False)
class _Worker:
    channel: socket.socket
    order: int
    pid: int | None = None
    open: int = 0
    handed: int = 0
    hello: bytearray = field(default_factory=bytearray)


class ConnectionBalancer:
    """Accepts on ``listener`` and hands each connection to the least-loaded ready worker.

    Runs in a daemon thread of the supervisor. Connections that arrive before any worker is
    ready wait (up to 1,024; then the oldest is closed), as they would in the kernel's
    queue."""

    def __init__(self, listener: socket.socket, backlog: int = 2048) -> None:
        self._listener = listener
        listener.listen(backlog)  # uvicorn's workers would call listen(); they never accept here
        self._dir = tempfile.mkdtemp(prefix="movement-cds-")
        self.address = os.path.join(self._dir, "balancer.sock")
        self._control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._control.bind(self.address)
        self._control.listen(64)
        self._workers: dict[socket.socket, _Worker] = {}
        self._pending: deque[socket.socket] = deque()
        self._order = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="connection-balancer",
                                        daemon=True)

    def __enter__(self) -> ConnectionBalancer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def start(self) -> None:
        self._thread.start()
        log.info("balancer: connections go to the least-loaded worker; workers register at %s",
                 self.address)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in [*self._workers, *self._pending, self._control]:
            sock.close()
        self._workers.clear()
        self._pending.clear()
        shutil.rmtree(self._dir, ignore_errors=True)

    def open_connections(self) -> dict[int, int]:
        """Open connections per ready worker pid (for logs and tests)."""
        return {w.pid: w.open for w in list(self._workers.values()) if w.pid is not None}

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            self._listener.setblocking(False)
            self._control.setblocking(False)
            sel.register(self._listener, selectors.EVENT_READ, "listener")
            sel.register(self._control, selectors.EVENT_READ, "control")
            while not self._stop.is_set():
                try:
                    self._step(sel)
                except Exception:  # a bug here must not stop the service taking connections
                    log.exception("balancer: unexpected error; carrying on")
                    self._stop.wait(0.1)

    def _step(self, sel: selectors.BaseSelector) -> None:
        if self._pending:  # held back (no worker ready, or their channels full): retry soon
            self._hand_out()
        for key, _ in sel.select(timeout=0.05 if self._pending else 0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data == "listener":
                self._accept_clients()
            elif key.data == "control":
                self._accept_worker(sel)
            else:
                self._read_worker(sel, sock)

    def _accept_clients(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. EMFILE: leave it queued in the kernel a moment
                log.warning("balancer: accept failed (%s); retrying in 0.1 s",
                            errno.errorcode.get(e.errno or 0, type(e).__name__))
                self._stop.wait(0.1)
                return
            self._pending.append(conn)
            while len(self._pending) > _PENDING_LIMIT:
                self._pending.popleft().close()
            self._hand_out()

    def _accept_worker(self, sel: selectors.BaseSelector) -> None:
        while True:
            try:
                channel, _ = self._control.accept()
            except (BlockingIOError, InterruptedError):
                return
            channel.setblocking(False)
            self._order += 1
            self._workers[channel] = _Worker(channel, self._order)
            sel.register(channel, selectors.EVENT_READ, "worker")

    def _read_worker(self, sel: selectors.BaseSelector, channel: socket.socket) -> None:
        worker = self._workers.get(channel)
        if worker is None:
            return
        try:
            data = channel.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the worker stopped (or is stopping): no more connections for it
            self._retire(sel, worker)
            return
        if worker.pid is None:
            worker.hello += data
            head, sep, data = bytes(worker.hello).partition(_HELLO_END)
            if not sep:
                return
            worker.pid = int(head[1:]) if head[1:].isdigit() else 0
            log.info("balancer: worker %s ready; %d ready", worker.pid,
                     sum(w.pid is not None for w in self._workers.values()))
            self._hand_out()
        worker.open = max(0, worker.open - data.count(_CLOSED))

    def _retire(self, sel: selectors.BaseSelector, worker: _Worker) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(worker.channel)
        self._workers.pop(worker.channel, None)
        worker.channel.close()
        log.info("balancer: worker %s left (%d connections were open)", worker.pid,
                 worker.open)

    def _hand_out(self) -> None:
        while self._pending:
            ready = [w for w in self._workers.values() if w.pid is not None]
            if not ready:
                return
            conn = self._pending[0]
            for worker in sorted(ready, key=lambda w: (w.open, w.handed, w.order)):
                try:
                    socket.send_fds(worker.channel, [b"c"], [conn.fileno()])
                except (BlockingIOError, InterruptedError):
                    continue  # this worker is busy reading; another may take it
                except OSError:
                    worker.open = 1 << 30  # gone; its EOF will retire it
                    continue
                worker.open += 1
                worker.handed += 1
                break
            else:
                return  # nobody could take it now; keep it for the next event
            self._pending.popleft().close()  # the worker holds its own copy now


# --- worker side ----------------------------------------------------------------------------


class _BalancedServer:
    """What ``create_server`` returns in a worker: connections come from the balancer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, channel: socket.socket,
                 protocol_factory: Callable[[], asyncio.BaseProtocol], ssl: Any) -> None:
        self._loop = loop
        self._channel = channel
        self._factory = protocol_factory
        self._ssl = ssl
        self._unreported = 0
        self._serving = True
        self._tasks: set[asyncio.Task[None]] = set()
        loop.add_reader(channel.fileno(), self._receive)
        self._send(b"p%d\n" % os.getpid())

    def _receive(self) -> None:
        while self._serving:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self._channel, 1024, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg, fds = b"", []
            for fd in fds:
                self._adopt(socket.socket(fileno=fd))
            if not msg and not fds:  # the supervisor is gone: nothing more will come
                self._stop_receiving()
                return

    def _adopt(self, sock: socket.socket) -> None:
        task = self._loop.create_task(self._connect(sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, sock: socket.socket) -> None:
        def factory() -> asyncio.BaseProtocol:
            protocol = self._factory()
            lost = protocol.connection_lost

            def connection_lost(exc: Exception | None) -> None:
                try:
                    lost(exc)
                finally:
                    self._closed()

            protocol.connection_lost = connection_lost  # type: ignore[method-assign]
            return protocol

        try:
            sock.setblocking(False)
            await self._loop.connect_accepted_socket(factory, sock, ssl=self._ssl)
        except Exception as e:  # the client left before we took it, or TLS failed
            log.info("balancer: a handed connection could not be used (%s)", type(e).__name__)
            sock.close()
            self._closed()

    def _closed(self) -> None:
        self._unreported += 1
        self._send(b"")

    def _send(self, data: bytes) -> None:
        if self._channel.fileno() < 0:
            return
        payload = data + _CLOSED * self._unreported
        try:
            sent = self._channel.send(payload)
        except (BlockingIOError, InterruptedError):
            return  # reported with the next one
        except OSError:
            return
        self._unreported = max(0, self._unreported - max(0, sent - len(data)))

    def _stop_receiving(self) -> None:
        if self._serving:
            self._serving = False
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._channel.fileno())

    # the parts of asyncio.Server that uvicorn uses
    def close(self) -> None:
        """Tell the balancer to stop sending, then take what it sent meanwhile."""
        if self._channel.fileno() < 0:
            return
        self._stop_receiving()
        with contextlib.suppress(OSError):
            self._channel.shutdown(socket.SHUT_WR)
        self._channel.settimeout(0.5)
        while True:  # until the balancer closes its end (it has seen our EOF)
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self._channel, 1024, 64)
            except OSError:
                break
            for fd in fds:
                self._adopt(socket.socket(fileno=fd))
            if not msg and not fds:
                break
        self._channel.close()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def is_serving(self) -> bool:
        return self._serving

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return ()


class _BalancedCreateServer:
    async def create_server(self, protocol_factory: Callable[[], asyncio.BaseProtocol],
                            host: Any = None, port: Any = None, *,
                            sock: socket.socket | None = None, **kwargs: Any) -> Any:
        address = os.environ.get(BALANCER_ENV)
        if sock is None or not address or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return await super().create_server(  # type: ignore[misc]
                protocol_factory, host, port, sock=sock, **kwargs)
        loop: asyncio.AbstractEventLoop = self  # type: ignore[assignment]
        channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        channel.setblocking(False)
        try:
            await loop.sock_connect(channel, address)
        except OSError:
            channel.close()
            raise
        sock.close()  # this worker never accepts on the shared socket
        return _BalancedServer(loop, channel, protocol_factory, kwargs.get("ssl"))


try:
    from uvloop import Loop as _BaseLoop
except ImportError:  # pragma: no cover - uvloop is in the service extra
    from asyncio import SelectorEventLoop as _BaseLoop  # type: ignore[assignment]


class _BalancedLoop(_BalancedCreateServer, _BaseLoop):  # type: ignore[misc]
    pass


def balanced_loop() -> asyncio.AbstractEventLoop:
    """uvicorn ``loop`` factory for the workers: uvloop (or asyncio) that takes its
    connections from the balancer named in ``MOVEMENT_CDS_BALANCER``."""
    return _BalancedLoop()
