"""The service's HTTP/1.1 protocol: uvicorn's httptools protocol with a request read timeout
and OperationOutcome bodies on the errors the HTTP layer answers by itself.

uvicorn (0.55) times out only idle keep-alive connections (``timeout_keep_alive``, between
requests); it has no limit on how long the headers or the body of a request may take to
arrive: a client that sends half its headers holds a connection (and a file descriptor)
forever. This protocol gives every request ``read_timeout`` seconds, from the connection
being opened or the request's first byte, to arrive whole (headers and body); then:

- headers not complete: a ``408`` OperationOutcome is written and the connection closed;
- body not complete (the application is already reading it): the connection is closed; the
  application sees the client as gone (``http.disconnect``) and logs one INFO line.

A request that has arrived whole is not limited here (the application's own budgets apply
while it answers). ``read_timeout`` is an attribute of uvicorn's ``Config``
(``configure(config, seconds)``), so it reaches every worker process with the config.

uvicorn's httptools protocol answers a request it cannot parse (a malformed request line or
header, a bad ``Content-Length``...) with a plain-text 400 by itself; here that answer is a
FHIR OperationOutcome, like every other non-2xx answer of the service.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cds import InputIssue
from fhir_adapters import operation_outcome

__all__ = ["DEFAULT_READ_TIMEOUT", "ServiceHttpProtocol", "configure"]

DEFAULT_READ_TIMEOUT: Final = 10.0
log = logging.getLogger("movement_cds.service")


def configure(config: Any, read_timeout: float) -> Any:
    """Use this protocol in a uvicorn ``Config`` (before ``config.load()``)."""
    config.http = ServiceHttpProtocol
    config.read_timeout = read_timeout
    return config


def _outcome(status: int, reason: bytes, code: str, text: str) -> bytes:
    body = orjson.dumps(operation_outcome([InputIssue("error", code, text)]))
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/fhir+json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % (status, reason, len(body))
            + body)


class ServiceHttpProtocol(HttpToolsProtocol):
    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.read_timeout: float = getattr(config, "read_timeout", DEFAULT_READ_TIMEOUT)
        self._read_timer: asyncio.TimerHandle | None = None
        self._headers_done = False

    # the deadline: armed when a request may be arriving, cleared once it has arrived whole
    def _arm(self) -> None:
        if self._read_timer is None and self.read_timeout > 0:
            self._read_timer = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if not self._headers_done:
            log.info("connection closed: request headers not received within %g s",
                     self.read_timeout)
            self.transport.write(_outcome(408, b"Request Timeout", "timeout",
                                          "the request was not received in time"))
        else:
            log.info("connection closed: request body not received within %g s",
                     self.read_timeout)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._headers_done = False
        self._arm()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._headers_done = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # idle now: uvicorn's keep-alive timeout applies until the next request

    def send_400_response(self, msg: str) -> None:
        self._disarm()
        self.transport.write(_outcome(400, b"Bad Request", "structure",
                                      "the HTTP request is malformed"))
        self.transport.close()
