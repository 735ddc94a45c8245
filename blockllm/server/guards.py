"""ASGI guards in front of every route of both servers (blockllm and the baselines): an optional
API key (Bearer token, every route but /health) and a cap on request body size. Rejections use
OpenAI's error body, sent before the application reads anything."""

from __future__ import annotations

import hmac
import json

from starlette.exceptions import HTTPException

OPEN_PATHS = frozenset({"/health"})


async def _reject(send, status: int, message: str, kind: str, headers=()) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": status}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *headers]})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """Raised from inside body reading; FastAPI passes HTTPExceptions through to its handler."""


class Guards:
    def __init__(self, app, api_key: str | None = None, max_body_bytes: int = 1 << 20):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        if self.api_key and scope["path"] not in OPEN_PATHS:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            token = auth[7:] if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                return await _reject(send, 401, "missing or wrong API key: send "
                                     "'Authorization: Bearer <key>'", "authentication_error",
                                     [(b"www-authenticate", b"Bearer")])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await _reject(send, 413, f"request body over {self.max_body} bytes",
                                 "invalid_request_error")
        seen = 0
        started = False

        async def limited():  # a body without content-length is counted as it arrives
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge(413, f"request body over {self.max_body} bytes")
            return msg

        async def tracked(msg):
            nonlocal started
            started |= msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited, tracked)
        except _TooLarge:
            if not started:
                await _reject(send, 413, f"request body over {self.max_body} bytes",
                              "invalid_request_error")
