"""The one server interceptor: authenticate, authorize, map errors, log, measure.

It wraps every method handler of the service's own contracts once, when the
server registers them (health and reflection pass straight through). Doing all
four jobs in one wrapper, applied at registration rather than through gRPC's
per-call interceptor chain, keeps the overhead to one extra coroutine frame.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_status import rpc_status

from shared import metrics
from shared.access import MethodRule
from shared.authn import (
    ANONYMOUS,
    Principal,
    TokenVerifier,
    bearer_token,
    set_current_principal,
)
from shared.errors import EmpireError, Unauthenticated, internal_status, to_rich_status
from shared.logs import write_access_line

logger = logging.getLogger(__name__)


class ServerInterceptor:
    def __init__(
        self,
        service: str,
        rules: dict[str, MethodRule],
        verifier: TokenVerifier | None,
    ) -> None:
        """`verifier=None` turns authentication off (development only)."""
        self._service = service
        self._rules = rules
        self._verifier = verifier
        self._counters: dict[tuple[str, grpc.StatusCode], Any] = {}
        self._timers: dict[str, Any] = {}

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler
    ) -> grpc.RpcMethodHandler:
        """`handler` with authentication, error mapping, logging and metrics.

        The server calls this once per method at start (see `shared.server`),
        so no per-call interception is paid; methods outside the service's own
        contracts (health, reflection) are returned as they are.
        """
        rule = self._rules.get(method)
        if rule is None:
            return handler
        call = _Call(self, method, rule)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                call.wrap_unary(handler.unary_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                call.wrap_streaming(handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                call.wrap_unary(handler.stream_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            call.wrap_streaming(handler.stream_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )

    async def authenticate(self, rule: MethodRule, context: Any) -> Principal:
        if rule.public:
            return ANONYMOUS
        if self._verifier is None:
            return Principal(subject="development", scopes=frozenset({"*"}))
        token = bearer_token(context.invocation_metadata())
        if token is None:
            raise Unauthenticated(
                "this method needs a bearer token", reason="MISSING_TOKEN"
            )
        principal = await self._verifier.verify(token)
        if rule.per_resource:
            principal.require_scope(rule.scope)  # the servicer checks the rest
        else:
            principal.require_whole_scope(rule.scope)
        return principal

    async def abort(self, context: Any, error: BaseException) -> None:
        if isinstance(error, EmpireError):
            status = rpc_status.to_status(to_rich_status(error, self._service))
        else:
            logger.error(
                "unexpected error in an RPC", exc_info=error, extra={"rpc": "internal"}
            )
            status = rpc_status.to_status(internal_status(self._service))
        await context.abort(status.code, status.details, status.trailing_metadata)

    def record(
        self, method: str, code: grpc.StatusCode, started: float, subject: str
    ) -> None:
        elapsed = time.perf_counter() - started
        counter = self._counters.get((method, code))
        if counter is None:
            # Looking a labelled child up costs more than using it: keep them.
            name = method.rpartition("/")[2]
            counter = metrics.RPC_TOTAL.labels(self._service, name, code.name)
            self._counters[(method, code)] = counter
            self._timers[method] = metrics.RPC_SECONDS.labels(self._service, name)
        counter.inc()
        self._timers[method].observe(elapsed)
        write_access_line(method, code.name, elapsed * 1000, subject)


class _Call:
    """Wraps one method's behaviour for the interceptor.

    `context.abort` raises `AbortError`, so a domain error leaves the wrapper
    as that abort; aborts a servicer made itself and cancellations pass through.
    """

    def __init__(self, owner: ServerInterceptor, method: str, rule: MethodRule):
        self._owner = owner
        self._method = method
        self._rule = rule

    def wrap_unary(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def unary(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            code, subject = grpc.StatusCode.OK, ""
            try:
                principal = await self._owner.authenticate(self._rule, context)
                subject = principal.subject
                set_current_principal(principal)
                return await behaviour(request, context)
            except BaseException as error:
                code = _code_seen_by_caller(error, context)
                if _needs_mapping(error):
                    await self._owner.abort(context, error)  # raises AbortError
                raise
            finally:
                self._owner.record(self._method, code, started, subject)

        return unary

    def wrap_streaming(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code, subject = grpc.StatusCode.OK, ""
            try:
                principal = await self._owner.authenticate(self._rule, context)
                subject = principal.subject
                set_current_principal(principal)
                result = behaviour(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:
                    await result
            except BaseException as error:
                code = _code_seen_by_caller(error, context)
                if _needs_mapping(error):
                    await self._owner.abort(context, error)  # raises AbortError
                raise
            finally:
                self._owner.record(self._method, code, started, subject)

        return streaming


def _needs_mapping(error: BaseException) -> bool:
    """True for errors the interceptor turns into a status itself."""
    return isinstance(error, Exception) and not isinstance(error, grpc.aio.AbortError)


def _code_seen_by_caller(error: BaseException, context: Any) -> grpc.StatusCode:
    if isinstance(error, grpc.aio.AbortError):
        return context.code() or grpc.StatusCode.UNKNOWN
    if isinstance(error, EmpireError):
        return error.code
    if isinstance(error, Exception):
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.CANCELLED  # CancelledError, GeneratorExit
