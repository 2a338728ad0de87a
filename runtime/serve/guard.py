"""Who may ask, and how: checks made on a request's head before any route reads its body, and the catch-all.

    Guard     (ASGI middleware, in this order) the Host header against the allow-list (403: a web page that
              rebinds its DNS name to 127.0.0.1 sends its own name as Host), the API key (401 unless
              `Authorization: Bearer KEY`; /health stays open for load balancers), `Content-Type:
              application/json` on POST (415: a page can POST text/plain cross-origin without a preflight), a
              declared Content-Length over the body limit (413, before a byte of the body is read)
    CatchAll  the outermost middleware: an exception no route turned into an answer becomes one log line and a
              500 in OpenAI's shape (no traceback: a client must not be able to fill the log)

Every refusal is OpenAI's `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Iterable

from mxport.runtime.serve.limits import ServeLimits, too_large
from mxport.runtime.serve.protocol import ApiError

log = logging.getLogger("mxport.serve")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
OPEN_PATHS = ("/health",)  # answered without the API key


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_hosts(bind_host: str) -> tuple[str, ...] | None:
    """The Host allow-list while bound to loopback (the names a local client uses); None (any) otherwise."""
    return tuple(dict.fromkeys([*LOOPBACK_NAMES, bind_host.strip("[]").lower()])) if is_loopback(bind_host) else None


def host_name(value: str) -> str:
    """A Host header without its port: 'localhost:8000' -> 'localhost', '[::1]:8000' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


async def send_error(send, err: ApiError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app, *, limits: ServeLimits, api_key: str | None = None,
                 hosts: Iterable[str] | None = None) -> None:
        self.app, self.limits = app, limits
        self.key = f"Bearer {api_key}".encode() if api_key else None
        self.hosts = None if hosts is None or "*" in hosts else {h.strip("[]").lower() for h in hosts}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and (err := self.refusal(scope)) is not None:
            await send_error(send, err)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope) -> ApiError | None:
        headers = dict(scope["headers"])
        if self.hosts is not None:
            host = host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.hosts:
                return ApiError(403, f"the Host header {host[:80]!r} is not one this server answers (--allowed-hosts: "
                                     f"{', '.join(sorted(self.hosts))})", None, "host_not_allowed")
        if self.key is not None and scope["path"] not in OPEN_PATHS:
            auth = headers.get(b"authorization")
            if auth is None:
                return ApiError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' (the "
                                     "OpenAI client does: api_key=...)", None, "invalid_api_key",
                                headers={"www-authenticate": "Bearer"})
            if not hmac.compare_digest(auth, self.key):
                return ApiError(401, "Incorrect API key provided", None, "invalid_api_key",
                                headers={"www-authenticate": "Bearer"})
        if scope["method"] == "POST":
            kind = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
            if kind != b"application/json":
                return ApiError(415, f"Content-Type {kind.decode('latin-1')[:80]!r}: this server takes "
                                     "'application/json' bodies only", None, "unsupported_media_type")
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.limits.max_body_bytes:
                return too_large(int(length), self.limits)
        return None


class CatchAll:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
            if type(exc).__name__ == "ClientDisconnect":
                return
            log.error("%s %s failed: %s: %s", scope.get("method"), scope.get("path", "")[:200], type(exc).__name__,
                      str(exc)[:300].replace("\n", " "))
            if not started:
                await send_error(send, ApiError(500, f"internal error ({type(exc).__name__}); the server keeps "
                                                     "serving", None, "internal_error"))
