"""Fake OpenAI and Anthropic HTTP servers on 127.0.0.1 that inject faults on command.

Each `FakeProvider` speaks one real wire format (OpenAI chat completions or
Anthropic messages, as JSON and as server-sent events) well enough for the
official SDKs, counts the completion requests it received, and answers the
next ones with whatever faults a test queued:

    async with FakeProvider("openai") as primary:
        primary.inject(server_error(500), times=1)
        client = AsyncOpenAI(base_url=primary.base_url, api_key="k", max_retries=0)

Used by the llm service's tests, the gateway end-to-end test and the bench.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

Flavor = Literal["openai", "anthropic"]

DEFAULT_REPLY = "The quick brown fox jumps over the lazy dog."


@dataclass(frozen=True)
class Fault:
    """One way to misbehave on one request; build these with the helpers below."""

    kind: str
    status: int = 0
    retry_after: str | None = None
    delay: float = 0.0
    after_chunks: int = 2
    hold_open: bool = False
    quote_prompt: bool = False
    error_type: str = ""
    message: str = ""
    code: int | str | None = None
    payload: Any = None


def rate_limited(retry_after: float | None = None) -> Fault:
    """HTTP 429, with a `Retry-After` header in seconds when given."""
    header = None if retry_after is None else f"{retry_after:g}"
    return Fault("rate_limited", status=429, retry_after=header)


def server_error(status: int = 500) -> Fault:
    """An HTTP 5xx error body in the provider's format."""
    return Fault("server_error", status=status)


def auth_error() -> Fault:
    """HTTP 401: the key is not accepted."""
    return Fault("auth_error", status=401)


def context_length() -> Fault:
    """HTTP 400 saying the prompt exceeds the model's context window."""
    return Fault("context_length", status=400)


def content_policy(quote_prompt: bool = False) -> Fault:
    """HTTP 400 refusing the prompt on content-policy grounds; with
    `quote_prompt`, the refusal quotes the last message, as some providers do."""
    return Fault("content_policy", status=400, quote_prompt=quote_prompt)


_ERROR_EVENT_STATUS = {
    "overloaded_error": 529,
    "api_error": 500,
    "rate_limit_error": 429,
    "invalid_request_error": 400,
}


def error_event(
    error_type: str = "overloaded_error",
    after_chunks: int = 0,
    quote_prompt: bool = False,
    message: str = "",
    code: int | str | None = None,
) -> Fault:
    """In a stream that began with HTTP 200, an error event after `after_chunks`
    pieces of text (0: before any), then the end of the stream: Anthropic's
    `event: error` with `{"type": "error", "error": {"type": ...}}`, or
    OpenAI's `data: {"error": {...}}`. `message` replaces the type's usual
    text and `code` goes in the error (as vLLM sends its status there); with
    `quote_prompt`, the message quotes the last message. A plain request gets
    the type's HTTP error (or the status `code` names)."""
    status = _ERROR_EVENT_STATUS.get(error_type)
    if status is None:
        status = code if isinstance(code, int) else 500
    return Fault(
        "error_event",
        status=status,
        after_chunks=after_chunks,
        quote_prompt=quote_prompt,
        error_type=error_type,
        message=message,
        code=code,
    )


def reset_before_headers() -> Fault:
    """Accept the connection, read the request, then reset the TCP connection."""
    return Fault("reset")


def no_answer() -> Fault:
    """Accept the request and never answer (until the client gives up)."""
    return Fault("no_answer")


def slow_first_token(delay: float) -> Fault:
    """Send headers at once, then wait `delay` seconds before the first token."""
    return Fault("slow_first_token", delay=delay)


def cut_mid_stream(after_chunks: int = 2) -> Fault:
    """Send some text, then drop the connection without a final chunk."""
    return Fault("cut", after_chunks=after_chunks)


def stall_mid_stream(after_chunks: int = 2) -> Fault:
    """Send some text, then keep the connection open and send nothing more."""
    return Fault("stall", after_chunks=after_chunks)


def invalid_json_mid_stream(after_chunks: int = 2) -> Fault:
    """Send some text, then an event whose data is not JSON, then the rest."""
    return Fault("invalid_json", after_chunks=after_chunks)


def wrong_shape(payload: Any, after_chunks: int = 0) -> Fault:
    """Valid JSON of the wrong shape (a field of the wrong type, a missing
    object): in a stream, `payload` as one event after `after_chunks` pieces of
    text, then the rest; for a plain request, `payload` as the whole answer."""
    return Fault("wrong_shape", after_chunks=after_chunks, payload=payload)


def no_done(hold_open: bool = False, reset: bool = False) -> Fault:
    """Send the whole answer but not the final sentinel (`[DONE]`, `message_stop`);
    then close the connection, keep it open when `hold_open`, or reset it (TCP
    RST, no end of the HTTP body) when `reset`."""
    return Fault("no_done", hold_open=hold_open, message="reset" if reset else "")


def truncated_without_finish(after_chunks: int = 2) -> Fault:
    """Send some text, then close cleanly with no finish reason and no sentinel."""
    return Fault("truncated", after_chunks=after_chunks)


@dataclass
class _Queued:
    fault: Fault
    remaining: int | None  # None: until cleared


@dataclass
class ReceivedRequest:
    """What one completion request carried."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]  # names in lower case
    at: float = field(default_factory=time.monotonic)


class FakeProvider:
    """A provider on 127.0.0.1:<ephemeral port> speaking one flavor's wire format."""

    def __init__(
        self,
        flavor: Flavor,
        *,
        reply: str = DEFAULT_REPLY,
        model: str = "fake-model",
        context_window: int | None = None,
        rejects_prefill: bool = False,
        chunk_delay: float = 0.0,
        api_key: str | None = None,
    ) -> None:
        self.flavor = flavor
        self.reply = reply
        self.model = model
        self.context_window = context_window
        self.rejects_prefill = rejects_prefill
        self.chunk_delay = chunk_delay
        self.api_key = api_key
        self.requests: list[ReceivedRequest] = []
        # Requests the client gave up on while this server was still holding them.
        self.abandoned = 0
        self._faults: deque[_Queued] = deque()
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> FakeProvider:
        app = web.Application()
        path = "/v1/chat/completions" if self.flavor == "openai" else "/v1/messages"
        app.router.add_post(path, self._handle_completion)
        app.router.add_get("/v1/models", self._handle_models)
        # handler_cancellation: a client that hangs up ends a hanging handler.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.2
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr,attr-defined]
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeProvider:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        """The base URL the flavor's SDK expects."""
        root = f"http://127.0.0.1:{self.port}"
        return root + "/v1" if self.flavor == "openai" else root

    # -- commands ----------------------------------------------------------------

    def inject(self, fault: Fault, times: int | None = 1) -> None:
        """Answer the next `times` completion requests with `fault` (None: all)."""
        self._faults.append(_Queued(fault, times))

    def clear(self) -> None:
        """Answer normally from now on."""
        self._faults.clear()

    @property
    def completions(self) -> int:
        """How many completion requests arrived, faulted or not."""
        return len(self.requests)

    # -- handlers ----------------------------------------------------------------

    async def _handle_models(self, request: web.Request) -> web.Response:
        if self.flavor == "openai":
            item = {
                "id": self.model,
                "object": "model",
                "created": 0,
                "owned_by": "fake",
            }
            return web.json_response({"object": "list", "data": [item]})
        item = {
            "type": "model",
            "id": self.model,
            "display_name": self.model,
            "created_at": "2025-01-01T00:00:00Z",
        }
        return web.json_response(
            {"data": [item], "has_more": False, "first_id": None, "last_id": None}
        )

    async def _handle_completion(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.requests.append(ReceivedRequest(request.path, body, headers))
        fault = self._next_fault()
        rejection = self._rejection(request, body, fault)
        if rejection is not None:
            return rejection
        if fault is not None and fault.kind == "reset":
            _reset(request)
            raise asyncio.CancelledError
        if fault is not None and fault.kind == "no_answer":
            await self._hold()

        pieces = _split(self.reply, body)
        usage = (_count_tokens(body), len(pieces))
        if body.get("stream"):
            return await self._stream(request, body, pieces, usage, fault)
        return await self._answer(request, body, pieces, usage, fault)

    async def _hold(self) -> None:
        """Say nothing until the client hangs up or the server closes."""
        try:
            await self._closing.wait()
        except asyncio.CancelledError:
            if not self._closing.is_set():
                self.abandoned += 1
            raise
        raise asyncio.CancelledError

    def _next_fault(self) -> Fault | None:
        if not self._faults:
            return None
        queued = self._faults[0]
        if queued.remaining is not None:
            queued.remaining -= 1
            if queued.remaining <= 0:
                self._faults.popleft()
        return queued.fault

    def _rejection(
        self, request: web.Request, body: dict[str, Any], fault: Fault | None
    ) -> web.Response | None:
        if self.api_key is not None and _presented_key(request) != self.api_key:
            return self._error(401, "authentication_error", "invalid api key")
        if fault is not None and fault.kind in _ERROR_FAULTS:
            return self._fault_error(fault, body)
        if fault is not None and fault.kind == "error_event" and not body.get("stream"):
            return self._fault_error(fault, body)
        if (
            self.context_window is not None
            and _count_tokens(body) > self.context_window
        ):
            return self._fault_error(context_length())
        messages = body.get("messages") or []
        if (
            self.rejects_prefill
            and messages
            and messages[-1].get("role") == "assistant"
        ):
            return self._error(
                400,
                "invalid_request_error",
                "This model does not support assistant message prefill. "
                "The conversation must end with a user message.",
            )
        return None

    def _fault_error(
        self, fault: Fault, body: dict[str, Any] | None = None
    ) -> web.Response:
        if fault.kind == "rate_limited":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return self._error(429, "rate_limit_error", "rate limited", headers)
        if fault.kind == "server_error":
            return self._error(fault.status, "server_error", "upstream exploded")
        if fault.kind == "auth_error":
            return self._error(401, "authentication_error", "invalid api key")
        if fault.kind == "context_length":
            return self._context_length_error()
        if fault.kind == "error_event":
            message = _error_event_message(fault, body or {})
            code = None if fault.code is None else str(fault.code)
            return self._error(fault.status, fault.error_type, message, code=code)
        quoted = _last_message_text(body) if fault.quote_prompt and body else ""
        return self._content_policy_error(quoted)

    def _context_length_error(self) -> web.Response:
        if self.flavor == "openai":
            return self._error(
                400,
                "invalid_request_error",
                "This model's maximum context length is "
                f"{self.context_window or 8192} tokens. Please reduce the length "
                "of the messages.",
                code="context_length_exceeded",
            )
        return self._error(
            400,
            "invalid_request_error",
            f"prompt is too long: tokens > {self.context_window or 200000} maximum",
        )

    def _content_policy_error(self, quoted: str = "") -> web.Response:
        flagged = f' Flagged input: "{quoted}".' if quoted else ""
        if self.flavor == "openai":
            return self._error(
                400,
                "invalid_request_error",
                "Your request was rejected as a result of our safety system." + flagged,
                code="content_policy_violation",
            )
        return self._error(
            400,
            "invalid_request_error",
            "Output blocked by content filtering policy." + flagged,
        )

    def _error(
        self,
        status: int,
        error_type: str,
        message: str,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> web.Response:
        if self.flavor == "openai":
            payload: dict[str, Any] = {
                "error": {"message": message, "type": error_type, "code": code}
            }
        else:
            payload = {
                "type": "error",
                "error": {"type": error_type, "message": message},
            }
        return web.json_response(payload, status=status, headers=headers)

    # -- non-streamed answers ----------------------------------------------------

    async def _answer(
        self,
        request: web.Request,
        body: dict[str, Any],
        pieces: list[str],
        usage: tuple[int, int],
        fault: Fault | None,
    ) -> web.StreamResponse:
        if fault is not None and fault.kind == "slow_first_token":
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.kind == "wrong_shape":
            return web.json_response(fault.payload)
        text = "".join(pieces)
        payload = json.dumps(self._full_message(text, usage, body)).encode()
        if fault is None or fault.kind in ("slow_first_token", "no_done"):
            return web.Response(body=payload, content_type="application/json")

        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(payload)
        await response.prepare(request)
        if fault.kind == "invalid_json":
            await response.write(b"{not json" + b" " * (len(payload) - 9))
            return response
        await response.write(payload[: len(payload) // 2])
        if fault.kind == "stall":
            await self._hold()
        _reset(request)
        raise asyncio.CancelledError

    def _full_message(
        self, text: str, usage: tuple[int, int], body: dict[str, Any]
    ) -> dict[str, Any]:
        if self.flavor == "openai":
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", self.model),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": usage[0],
                    "completion_tokens": usage[1],
                    "total_tokens": usage[0] + usage[1],
                },
            }
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", self.model),
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
        }

    # -- streamed answers --------------------------------------------------------

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        pieces: list[str],
        usage: tuple[int, int],
        fault: Fault | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        events = self._events(body, pieces, usage)
        opening, deltas, closing = events
        kind = fault.kind if fault is not None else None

        if kind == "slow_first_token":
            await asyncio.sleep(fault.delay)  # type: ignore[union-attr]
        for event in opening:
            await response.write(event)
        for index, event in enumerate(deltas):
            if fault is not None and index == fault.after_chunks:
                if kind == "cut":
                    _reset(request)
                    raise asyncio.CancelledError
                if kind == "stall":
                    await self._hold()
                if kind == "truncated":
                    await response.write_eof()
                    return response
                if kind == "invalid_json":
                    await response.write(_sse("{not valid json", self._event_name()))
                if kind == "wrong_shape":
                    payload = json.dumps(fault.payload)  # type: ignore[union-attr]
                    await response.write(_sse(payload, self._event_name()))
                if kind == "error_event":
                    await response.write(self._error_event(fault, body))
                    await response.write_eof()
                    return response
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await response.write(event)

        if kind == "no_done":
            await response.write(closing[0])
            if fault is not None and fault.hold_open:
                await self._hold()
            if fault is not None and fault.message == "reset":
                await asyncio.sleep(0.05)  # let the answer leave before the reset
                _reset(request)
                raise asyncio.CancelledError
            await response.write_eof()
            return response
        for event in closing:
            await response.write(event)
        await response.write_eof()
        return response

    def _error_event(self, fault: Fault, body: dict[str, Any]) -> bytes:
        error = {"type": fault.error_type, "message": _error_event_message(fault, body)}
        if self.flavor == "openai":
            return _sse(json.dumps({"error": {**error, "code": fault.code}}))
        return _sse(json.dumps({"type": "error", "error": error}), "error")

    def _event_name(self) -> str | None:
        return None if self.flavor == "openai" else "content_block_delta"

    def _events(
        self, body: dict[str, Any], pieces: list[str], usage: tuple[int, int]
    ) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """The opening events, one event per piece, and the closing events.

        The first closing event carries the finish reason (and usage for
        OpenAI); the rest are the end-of-stream sentinels a fault may drop.
        """
        model = body.get("model", self.model)
        if self.flavor == "openai":
            return self._openai_events(body, model, pieces, usage)
        return _anthropic_events(model, pieces, usage)

    def _openai_events(
        self,
        body: dict[str, Any],
        model: str,
        pieces: list[str],
        usage: tuple[int, int],
    ) -> tuple[list[bytes], list[bytes], list[bytes]]:
        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        opening = [_sse(json.dumps(chunk({"role": "assistant", "content": ""}, None)))]
        deltas = [_sse(json.dumps(chunk({"content": p}, None))) for p in pieces]
        final = _sse(json.dumps(chunk({}, "stop")))
        closing = [final]
        if (body.get("stream_options") or {}).get("include_usage"):
            usage_chunk = {
                **chunk({}, None),
                "choices": [],
                "usage": {
                    "prompt_tokens": usage[0],
                    "completion_tokens": usage[1],
                    "total_tokens": usage[0] + usage[1],
                },
            }
            # Usage follows the finish chunk, as OpenAI sends it; "no_done"
            # drops only the sentinel, so fold it into the first closing event.
            closing = [final + _sse(json.dumps(usage_chunk))]
        closing.append(_sse("[DONE]"))
        return opening, deltas, closing


def _anthropic_events(
    model: str, pieces: list[str], usage: tuple[int, int]
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": usage[0], "output_tokens": 1},
        },
    }
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    opening = [
        _sse(json.dumps(start), "message_start"),
        _sse(json.dumps(block), "content_block_start"),
        _sse(json.dumps({"type": "ping"}), "ping"),
    ]
    deltas = [
        _sse(
            json.dumps(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                }
            ),
            "content_block_delta",
        )
        for piece in pieces
    ]
    finish = _sse(
        json.dumps({"type": "content_block_stop", "index": 0}), "content_block_stop"
    ) + _sse(
        json.dumps(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": usage[1]},
            }
        ),
        "message_delta",
    )
    closing = [finish, _sse(json.dumps({"type": "message_stop"}), "message_stop")]
    return opening, deltas, closing


_ERROR_FAULTS = {
    "rate_limited",
    "server_error",
    "auth_error",
    "context_length",
    "content_policy",
}


def _error_event_message(fault: Fault, body: dict[str, Any]) -> str:
    message = {"overloaded_error": "Overloaded", "api_error": "Internal server error"}
    text = fault.message or message.get(fault.error_type, "The request failed.")
    if fault.quote_prompt:
        text += f' Offending input: "{_last_message_text(body)}".'
    return text


def _last_message_text(body: dict[str, Any]) -> str:
    messages = body.get("messages") or [{}]
    content = messages[-1].get("content")
    if isinstance(content, list):  # Anthropic's content blocks
        content = " ".join(str(block.get("text", "")) for block in content)
    return str(content or "")


def _sse(data: str, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + f"data: {data}\n\n").encode()


def _split(reply: str, body: dict[str, Any]) -> list[str]:
    """The reply as word-sized pieces, cut to the request's max tokens."""
    words = reply.split(" ")
    pieces = [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    return pieces[:limit] if isinstance(limit, int) and limit > 0 else pieces


def _count_tokens(body: dict[str, Any]) -> int:
    """A crude token count: words of every message and of the system prompt."""
    text = [str(m.get("content", "")) for m in body.get("messages") or []]
    system = body.get("system")
    if isinstance(system, str):
        text.append(system)
    return sum(len(t.split()) for t in text)


def _presented_key(request: web.Request) -> str | None:
    if "x-api-key" in request.headers:
        return request.headers["x-api-key"]
    auth = request.headers.get("Authorization", "")
    return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None


def _reset(request: web.Request) -> None:
    """Abort the connection with a TCP RST rather than an orderly close."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _serve_forever(flavor: Flavor) -> None:
    """Serve one fake provider until stdin closes (for a bench or a manual run)."""
    async with FakeProvider(flavor) as fake:
        print(fake.base_url, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    chosen = sys.argv[1] if len(sys.argv) > 1 else "openai"
    if chosen not in ("openai", "anthropic"):
        raise SystemExit(
            "usage: python -m tests.harness.fake_providers [openai|anthropic]"
        )
    asyncio.run(_serve_forever(chosen))  # type: ignore[arg-type]
