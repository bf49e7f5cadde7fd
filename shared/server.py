"""Bootstrap of a service: gRPC with health, reflection and the interceptor, plus HTTP.

The HTTP side serves `/metrics` for Prometheus, `/healthz`, and any routes the
service adds (auth publishes its JWKS there for the gateway).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from aiohttp import web
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.access import rules_for_services
from shared.authn import HttpJwksSource, JwksTokenVerifier, TokenVerifier
from shared.config import ServerSettings, SettingsError
from shared.errors import InvalidArgument
from shared.interceptor import ServerInterceptor
from shared.logs import configure_logging
from shared.revocations import HttpRevocationSource, RevocationList

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass
class Service:
    """What a service hands the bootstrap: its servicers and its hooks."""

    name: str
    servicers: list[tuple[Callable[[Any, Any], None], object]]
    service_names: list[str]
    http_routes: list[web.RouteDef] = field(default_factory=list)
    on_close: Callable[[], Awaitable[None]] | None = None
    token_verifier: TokenVerifier | None = None


class RunningServer:
    """A started service; `stop` drains it."""

    def __init__(
        self,
        service: Service,
        server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        http_runner: web.AppRunner,
        host: str,
        port: int,
        http_port: int,
        verifier: TokenVerifier | None = None,
    ) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.http_port = http_port
        self._server = server
        self._health = health_servicer
        self._http_runner = http_runner
        self._verifier = verifier
        self._stopped = False

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.target)

    async def stop(self, grace_seconds: float) -> None:
        """Report NOT_SERVING, let in-flight RPCs finish, then close the service."""
        if self._stopped:
            return
        self._stopped = True
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_seconds)
        await self._http_runner.cleanup()
        if isinstance(self._verifier, JwksTokenVerifier):
            await self._verifier.close()
        if self.service.on_close is not None:
            await self.service.on_close()


def default_verifier(settings: ServerSettings) -> TokenVerifier | None:
    if not settings.auth_enabled:
        logger.warning("authentication is OFF (EMPIRE_AUTH_ENABLED=false); dev only")
        return None
    revocations = None
    if settings.revocation_poll_seconds > 0:
        revocations = RevocationList(
            HttpRevocationSource(settings.revocations_url),
            poll_seconds=settings.revocation_poll_seconds,
            leeway_seconds=settings.clock_leeway_seconds,
        )
    return JwksTokenVerifier(
        HttpJwksSource(settings.jwks_url),
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        leeway_seconds=settings.clock_leeway_seconds,
        refetch_interval_seconds=settings.jwks_refetch_interval_seconds,
        max_age_seconds=settings.jwks_max_age_seconds,
        revocations=revocations,
    )


async def start_server(
    service: Service,
    settings: ServerSettings,
    verifier: TokenVerifier | None = None,
) -> RunningServer:
    """Start `service` on the settings' ports (0 picks free ones)."""
    if verifier is None and service.token_verifier is not None:
        verifier = service.token_verifier
    elif verifier is None:
        verifier = default_verifier(settings)

    interceptor = ServerInterceptor(
        service.name, rules_for_services(service.service_names), verifier
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            # Above the largest token the verifier accepts (8 KiB), so an
            # oversized token is refused by it with a reason, not by gRPC.
            ("grpc.max_metadata_size", 16 * 1024),
        ],
    )
    registration = _WrappingRegistration(server, interceptor)
    for add_to_server, servicer in service.servicers:
        add_to_server(servicer, registration)
    registration.check_registered(service.service_names)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    try:
        port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    except RuntimeError:
        raise _cannot_listen(settings, "PORT", settings.port) from None
    if isinstance(verifier, JwksTokenVerifier):
        # Before serving: the first list of revoked tokens is fetched now.
        await verifier.start()
    try:
        await server.start()
    except BaseException:
        if isinstance(verifier, JwksTokenVerifier):
            await verifier.close()
        raise
    for name in ["", *service.service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    try:
        http_runner, http_port = await _start_http(service, settings)
    except BaseException:
        # Nothing may keep serving gRPC when the service fails to start.
        await server.stop(0)
        if isinstance(verifier, JwksTokenVerifier):
            await verifier.close()
        raise
    return RunningServer(
        service,
        server,
        health_servicer,
        http_runner,
        settings.host,
        port,
        http_port,
        verifier,
    )


class _WrappingRegistration:
    """Stands in for the server while generated code registers a servicer.

    Each method handler is wrapped by the interceptor once, here, instead of
    through `grpc.aio.server(interceptors=...)`, which would await an extra
    interception step on every call.
    """

    def __init__(self, server: grpc.aio.Server, interceptor: ServerInterceptor):
        self._server = server
        self._interceptor = interceptor
        self._registered: set[str] = set()

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        # Generated code follows this with add_registered_method_handlers for
        # the same service; the wrapped handlers are registered there.
        pass

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        wrapped = {
            name: self._interceptor.wrap(
                f"/{service_name}/{name}", _refusing_undecodable(handler)
            )
            for name, handler in method_handlers.items()
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service_name, wrapped),)
        )
        self._server.add_registered_method_handlers(service_name, wrapped)
        self._registered.add(service_name)

    def check_registered(self, service_names: list[str]) -> None:
        missing = set(service_names) - self._registered
        if missing:
            raise RuntimeError(f"no servicer registered for {sorted(missing)}")


class _Undecodable:
    """Stands in for a request message whose bytes did not parse."""


_UNDECODABLE = _Undecodable()


def _refusing_undecodable(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler`, answering a request that does not parse with INVALID_ARGUMENT.

    gRPC itself answers UNKNOWN, with no ErrorInfo, no access line and no
    metric, when the deserializer raises. Here the deserializer hands back a
    marker instead, and the behaviour, which runs inside the interceptor (so
    after authentication), raises the domain error for it.
    """
    parse = handler.request_deserializer
    if parse is None:
        return handler  # raw bytes: nothing to parse

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return _UNDECODABLE

    if handler.unary_unary or handler.unary_stream:
        behaviour = handler.unary_unary or handler.unary_stream

        def one_request(request: Any, context: Any) -> Any:
            if request is _UNDECODABLE:
                raise _malformed_request()
            return behaviour(request, context)

        make = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary
            else grpc.unary_stream_rpc_method_handler
        )
        return make(one_request, deserialize, handler.response_serializer)

    behaviour = handler.stream_unary or handler.stream_stream

    def request_stream(requests: AsyncIterator[Any], context: Any) -> Any:
        return behaviour(_checked_requests(requests), context)

    make = (
        grpc.stream_unary_rpc_method_handler
        if handler.stream_unary
        else grpc.stream_stream_rpc_method_handler
    )
    return make(request_stream, deserialize, handler.response_serializer)


async def _checked_requests(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if request is _UNDECODABLE:
            raise _malformed_request()
        yield request


def _malformed_request() -> InvalidArgument:
    return InvalidArgument(
        "request",
        "is not a valid message of this method's request type (corrupt wire "
        "format, or a string field that is not UTF-8)",
        reason="MALFORMED_REQUEST",
    )


async def _start_http(
    service: Service, settings: ServerSettings
) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_routes(service.http_routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.http_port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise _cannot_listen(settings, "HTTP_PORT", settings.http_port) from None
    return runner, runner.addresses[0][1]


def _cannot_listen(settings: ServerSettings, variable: str, port: int) -> SettingsError:
    """Names the variables behind an address the service cannot listen on."""
    return SettingsError(
        f"EMPIRE_HOST, EMPIRE_{settings.service.upper()}_{variable}: cannot listen "
        f"on {settings.host}:{port} (the port is in use, or the host is not an "
        "address of this machine)"
    )


async def _metrics(_: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


SettingsT = TypeVar("SettingsT")


def main(
    name: str,
    load_settings: Callable[[], SettingsT],
    create_service: Callable[[SettingsT], Awaitable[Service]],
) -> None:
    """Entry point of `python -m services.<name>`."""
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"{name}: bad configuration: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    server_settings: ServerSettings = settings.server  # type: ignore[attr-defined]
    configure_logging(server_settings.log_level)
    try:
        asyncio.run(
            _serve_until_signalled(name, settings, server_settings, create_service)
        )
    except SettingsError as error:  # found only when starting: a host or port
        print(f"{name}: cannot start: {error}", file=sys.stderr)
        raise SystemExit(2) from None


async def _serve_until_signalled(
    name: str,
    settings: SettingsT,
    server_settings: ServerSettings,
    create_service: Callable[[SettingsT], Awaitable[Service]],
) -> None:
    service = await create_service(settings)
    running = await start_server(service, server_settings)
    logger.info(
        "%s listening on %s (http %s)",
        name,
        running.target,
        running.http_port,
        extra={"grpc_port": running.port, "http_port": running.http_port},
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    logger.info(
        "%s draining for up to %ss", name, server_settings.shutdown_grace_seconds
    )
    await running.stop(server_settings.shutdown_grace_seconds)
    logger.info("%s stopped", name)
