"""Loopback HTTP servers that speak the Anthropic Messages and OpenAI Chat Completions formats.

Tests point the official SDKs at them (``base_url``) instead of the real APIs, so the
SDKs' own request building, retries, timeouts and response parsing are exercised.
A server answers from a script: each request takes the next :class:`Reply` (a model
answer, a 429 with ``retry-after``, a 500, or a hang), then ``fallback`` is asked::

    with ScriptedLLMServer("anthropic", [rate_limited(0.2), answer(DIFF)]) as srv:
        client = anthropic.Anthropic(api_key="k", base_url=srv.base_url)
        ...
        assert len(srv.requests) == 2

Only the standard library (``http.server`` in a thread); it binds 127.0.0.1 only.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

# ---------------------------------------------------------------------------
# What a server may answer


@dataclass(frozen=True, kw_only=True)
class Reply:
    """One scripted answer.

    Attributes:
        text: the assistant's message (for status 200).
        status: HTTP status; anything but 200 is sent as the provider's error body.
        headers: extra response headers (``retry-after`` ...).
        delay: seconds to wait before answering (a hang longer than the client's timeout).
        input_tokens / output_tokens: usage to report; None = about 4 characters a token.
    """

    text: str = ""
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None


def answer(text: str, **kwargs: Any) -> Reply:
    """A successful model reply."""
    return Reply(text=text, **kwargs)


def rate_limited(retry_after: float = 0.2) -> Reply:
    """HTTP 429 with a ``retry-after`` header (seconds)."""
    return Reply(status=429, headers={"retry-after": f"{retry_after:g}"})


def server_error(status: int = 500) -> Reply:
    """An internal server error (5xx)."""
    return Reply(status=status)


def hang(seconds: float = 30.0) -> Reply:
    """No answer for ``seconds`` (the server wakes early when closed)."""
    return Reply(delay=seconds, text="(too late)")


@dataclass(frozen=True)
class Request:
    """A request the server received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float  # time.monotonic() on arrival

    @property
    def prompt(self) -> str:
        """All message texts of the request, joined (system prompt included)."""
        parts: list[str] = []
        system = self.body.get("system")
        if isinstance(system, str):
            parts.append(system)
        for m in self.body.get("messages", []):
            content = m.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(c.get("text", "")) for c in content if isinstance(c, dict))
        return "\n".join(parts)


Fallback = Callable[[Request, int], Reply]


# ---------------------------------------------------------------------------
# The server


class ScriptedLLMServer:
    """An Anthropic- or OpenAI-compatible HTTP server on 127.0.0.1 that answers from a script.

    Args:
        provider: ``"anthropic"`` (``POST /v1/messages``) or ``"openai"``
            (``POST /v1/chat/completions``).
        script: replies used in order, one per request.
        fallback: called with (request, request number) once the script is used up;
            None = answer 500 "script exhausted".
        api_key: if set, requests without this key get 401.
    """

    def __init__(
        self,
        provider: str,
        script: Sequence[Reply] = (),
        *,
        fallback: Fallback | None = None,
        api_key: str | None = None,
    ) -> None:
        if provider not in ("anthropic", "openai"):
            raise ValueError(f"provider must be 'anthropic' or 'openai', got {provider!r}")
        self.provider = provider
        self.script = list(script)
        self.fallback = fallback
        self.api_key = api_key
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._ids = itertools.count(1)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"llm-server-{provider}", daemon=True
        )
        self._thread.start()

    # -- public -----------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """What to pass the SDK as ``base_url`` (OpenAI's includes ``/v1``)."""
        root = f"http://127.0.0.1:{self.port}"
        return root + "/v1" if self.provider == "openai" else root

    def add(self, *replies: Reply) -> None:
        """Append replies to the script."""
        with self._lock:
            self.script.extend(replies)

    def close(self) -> None:
        """Stop serving and wake hanging handlers. Idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedLLMServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- answering --------------------------------------------------------------

    def _next(self, req: Request) -> Reply:
        with self._lock:
            self.requests.append(req)
            number = len(self.requests)
            if self.script:
                return self.script.pop(0)
        if self.fallback is not None:
            return self.fallback(req, number)
        return Reply(status=500, text="script exhausted")

    def _key_ok(self, headers: Mapping[str, str]) -> bool:
        if self.api_key is None:
            return True
        bearer = headers.get("authorization") == f"Bearer {self.api_key}"
        if self.provider == "anthropic":  # the SDK sends x-api-key or a bearer token
            return bearer or headers.get("x-api-key") == self.api_key
        return bearer

    def _success(self, req: Request, r: Reply) -> dict[str, Any]:
        n = next(self._ids)
        model = str(req.body.get("model", "model"))
        tin = r.input_tokens if r.input_tokens is not None else max(1, len(req.prompt) // 4)
        tout = r.output_tokens if r.output_tokens is not None else max(1, len(r.text) // 4)
        if self.provider == "anthropic":
            return {
                "id": f"msg_{n:06d}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": r.text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": tin, "output_tokens": tout},
            }
        return {
            "id": f"chatcmpl-{n:06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": r.text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout},
        }

    def _error(self, status: int, message: str) -> dict[str, Any]:
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            404: "not_found_error",
            429: "rate_limit_error",
        }.get(status, "api_error")
        if self.provider == "anthropic":
            return {"type": "error", "error": {"type": kind, "message": message}}
        return {"error": {"message": message, "type": kind, "code": None}}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self
        path = "/v1/messages" if self.provider == "anthropic" else "/v1/chat/completions"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet in tests
                pass

            def _send(self, status: int, body: dict[str, Any], headers: Mapping[str, str]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): nothing to answer

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self._send(400, server._error(400, "body is not JSON"), {})
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                route = self.path.split("?", 1)[0]
                if route != path:
                    self._send(404, server._error(404, f"no route {route}; use {path}"), {})
                    return
                if not server._key_ok(headers):
                    self._send(401, server._error(401, "invalid api key"), {})
                    return
                req = Request(route, headers, body, time.monotonic())
                reply = server._next(req)
                if reply.delay and server._closing.wait(reply.delay):
                    return  # closed while hanging
                if reply.status == 200:
                    self._send(200, server._success(req, reply), reply.headers)
                else:
                    msg = reply.text or f"scripted status {reply.status}"
                    self._send(reply.status, server._error(reply.status, msg), reply.headers)

        return Handler


__all__ = [
    "Fallback",
    "Reply",
    "Request",
    "ScriptedLLMServer",
    "answer",
    "hang",
    "rate_limited",
    "server_error",
]
