"""The HTTP server under the app: uvicorn on h11, bounded against slow and greedy clients.

    listen(host, port)        bind the socket first: a bad or busy port is one MxportError before the model loads
    make_server(app, limits)  a uvicorn.Server whose connections are BoundedH11 (below), with --keep-alive and
                              --max-header-kb (h11's limit on a request head)
    BoundedH11                uvicorn's h11 protocol plus: a client has --request-timeout seconds from a
                              request's first byte (or from connecting) to its last body byte, then the connection
                              is closed (slowloris: a head or body sent a byte at a time cannot hold a connection);
                              beyond --max-connections open connections a new one is answered 503 and closed;
                              a malformed request or an oversized head is a 400 in OpenAI's shape
"""

from __future__ import annotations

import json
import logging
import socket

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from mxport.errors import MxportError
from mxport.runtime.serve.limits import ServeLimits

log = logging.getLogger("mxport.serve")


def listen(host: str, port: int) -> socket.socket:
    """A listening-ready socket bound to (host, port), or MxportError naming both."""
    if not 0 <= port <= 65535:
        raise MxportError(f"--port {port}: expected 0..65535")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError) as exc:
        raise MxportError(f"--host {host}: cannot resolve it ({exc})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MxportError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def _raw_error(status: int, reason: str, message: str, code: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error" if status < 500 else
                                 "server_error", "param": None, "code": code}}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class BoundedH11(H11Protocol):
    limits = ServeLimits()  # set per server by make_server (uvicorn makes the protocol from its class)

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = None
        if len(self.connections) > self.limits.max_connections:
            transport.write(_raw_error(503, "Service Unavailable", f"the server has {self.limits.max_connections} "
                                       "open connections (--max-connections); retry later", "too_many_connections"))
            transport.close()
            return
        self._arm()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.limits.request_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.debug("closing %s: no complete request within %g s", self.client, self.limits.request_timeout)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._arm()  # from the first byte of a request (a no-op while one is timed already)
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.DONE or state is h11.MUST_CLOSE or (state is h11.IDLE and not self.conn.trailing_data[0]):
            self._disarm()  # the request is in (or nothing of the next one has come)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(_raw_error(400, "Bad Request", f"{msg} (a malformed request, or a request head "
                                            f"over {self.limits.max_header_kb} KiB)", "invalid_http_request"))
            self.transport.close()


def make_server(app, limits: ServeLimits, *, host: str = "127.0.0.1", port: int = 0,
                log_level: str = "info") -> uvicorn.Server:
    protocol = type("BoundedH11", (BoundedH11,), {"limits": limits})
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", http=protocol,
                            timeout_keep_alive=limits.keep_alive, timeout_graceful_shutdown=5,
                            h11_max_incomplete_event_size=limits.max_header_kb * 1024)
    return uvicorn.Server(config)
