"""Cache-aside for unary RPCs through the cache service, with fill leases.

A service adopts response caching by naming the RPCs to cache and the cache
route each goes to, then adding one interceptor to its channel:

    cache = connect("cache", cache_target, token=token)
    response_cache = ResponseCache(cache, {
        "/empire.llm.v1.LlmService/Complete": CachedMethod("llm_completions"),
    })
    interceptor = CachingInterceptor(response_cache)
    channel = grpc.aio.insecure_channel(target, interceptors=[interceptor])

A configured call looks its request up first. A hit (or a stale answer the
route allows) is answered from the cache. On a miss one caller across every
replica receives a fill lease, calls the origin and stores the response; the
other callers wait for that fill instead of calling the origin too. When the
origin fails, a stale response within the route's stale-if-error window is
served instead of the error. When the cache itself fails, calls go straight
to the origin: caching never turns into an outage.

Responses are kept per caller: unless a method is marked `shared`, its cache
key ends with a digest of who calls, read from the call's outgoing bearer
token (the token's verified subject when the ResponseCache has a verifier, so
a caller's fresh tokens share entries; otherwise the token itself). A call
whose token does not verify, or whose credentials are not a bearer token,
skips the cache. Mark a method `shared` only when its responses do not depend
on the caller.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from empire.cache.v1 import cache_service_pb2 as cache_pb
from shared.authn import TokenVerifier, bearer_token
from shared.errors import EmpireError, Unauthenticated

logger = logging.getLogger(__name__)

# Origin failures after which a stale response is better than the error.
STALE_IF_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
    }
)


@dataclass(frozen=True)
class CachedMethod:
    """How one RPC is cached.

    `key` builds the cache key from the request (default: the method and a
    digest of the request's deterministic serialization); unless `shared`,
    the caller's digest is appended to it, so purge per-caller entries by tag
    or key prefix. `tags` names the surrogate keys of a response, for purges
    by tag; `vary` gives the values of the route's vary-on names from the
    request and the call's outgoing metadata (names in lower case, repeated
    values joined by ","); `ttl_seconds` overrides the route's TTL; `shared`
    lets every caller be answered with the same cached response.
    """

    route_id: str
    key: Callable[[Message], str] | None = None
    tags: Callable[[Message, Message], Sequence[str]] | None = None
    vary: Callable[[Message, Mapping[str, str]], Mapping[str, str]] | None = None
    ttl_seconds: int | None = None
    shared: bool = False


def default_key(method: str, request: Message) -> str:
    digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
    return f"{method}#{digest}"


class ResponseCache:
    """The cache-aside logic, usable directly or through CachingInterceptor."""

    def __init__(
        self,
        cache: Any,
        methods: Mapping[str, CachedMethod],
        *,
        max_wait_ms: int = 5000,
        verifier: TokenVerifier | None = None,
    ) -> None:
        # `cache` is a client with awaitable Lookup and Store (shared.clients.connect).
        self._cache = cache
        self._methods = dict(methods)
        self._max_wait_ms = max_wait_ms
        self._verifier = verifier
        self._refreshes: set[asyncio.Task[None]] = set()

    def method(self, path: str) -> CachedMethod | None:
        return self._methods.get(path)

    async def call(
        self,
        path: str,
        request: Message,
        invoke: Callable[[], Awaitable[Message]],
        response_type: type[Message],
        metadata: Iterable[tuple[str, str | bytes]] | None = None,
    ) -> Message:
        """The response to `request`: cached, or from `invoke` and then stored.

        `metadata` is what the call sends to the origin; the caller's identity
        and any `vary` values are read from it.
        """
        method = self._methods[path]
        key = method.key(request) if method.key else default_key(path, request)
        if not method.shared:
            caller = await self._caller(metadata)
            if caller is None:
                return await invoke()
            key = f"{key}@{caller}"
        vary = dict(method.vary(request, _as_mapping(metadata))) if method.vary else {}
        lookup = cache_pb.LookupRequest(
            route_id=method.route_id,
            key=key,
            vary=vary,
            request_lease=True,
            max_wait_ms=self._max_wait_ms,
        )
        answer = await self._lookup(lookup)
        if answer is not None and answer.result in (
            cache_pb.LOOKUP_RESULT_HIT,
            cache_pb.LOOKUP_RESULT_STALE,
        ):
            cached = _parse(response_type, answer.value)
            if cached is not None:
                if answer.lease_token:
                    self._refresh_later(method, key, vary, request, invoke, answer)
                return cached

        try:
            response = await invoke()
        except grpc.aio.AioRpcError as error:
            stale = await self._stale_on_error(lookup, error, response_type)
            if stale is None:
                raise
            return stale
        if answer is not None and answer.lease_token:
            await self._store(method, key, vary, request, response, answer.lease_token)
        return response

    async def close(self) -> None:
        for task in list(self._refreshes):
            task.cancel()

    async def _caller(
        self, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> str | None:
        """A digest naming who calls; None when its token does not verify."""
        token = bearer_token(metadata)
        if token is None:
            # Credentials of another scheme (Basic, ...) name a caller the
            # helper cannot tell apart: sharing "anonymous" would leak.
            if any(name == "authorization" for name, _ in metadata or ()):
                return None
            return "anonymous"
        if self._verifier is None:
            return _digest("token", token)
        try:
            principal = await self._verifier.verify(token)
        except EmpireError as error:
            # The origin refuses such a token itself; the cache must not answer.
            logger.log(
                logging.DEBUG
                if isinstance(error, Unauthenticated)
                else logging.WARNING,
                "caller not verified (%s); the call skips the cache",
                error.reason,
            )
            return None
        if principal.is_anonymous:
            return _digest("token", token)
        # Scopes and roles too: a narrower token of the same subject, which
        # the origin might refuse, must not be answered from a broader one's.
        grants = (
            " ".join(sorted(principal.scopes))
            + "\0"
            + " ".join(sorted(principal.roles))
        )
        return _digest("subject", f"{principal.subject}\0{grants}")

    async def _lookup(self, lookup: cache_pb.LookupRequest) -> Any:
        try:
            return await self._cache.Lookup(lookup)
        except grpc.aio.AioRpcError as error:
            logger.warning(
                "cache lookup failed (%s); calling the origin directly",
                error.code().name,
            )
            return None

    async def _store(
        self,
        method: CachedMethod,
        key: str,
        vary: Mapping[str, str],
        request: Message,
        response: Message,
        lease_token: str,
    ) -> None:
        store = cache_pb.StoreRequest(
            route_id=method.route_id,
            key=key,
            vary=vary,
            value=response.SerializeToString(),
            tags=list(method.tags(request, response)) if method.tags else [],
            lease_token=lease_token,
        )
        if method.ttl_seconds is not None:
            store.ttl_seconds = method.ttl_seconds
        try:
            await self._cache.Store(store)
        except grpc.aio.AioRpcError as error:
            # ABORTED means an invalidation overtook this fill: correct to drop it.
            logger.log(
                logging.DEBUG
                if error.code() == grpc.StatusCode.ABORTED
                else logging.WARNING,
                "cache store skipped (%s)",
                error.code().name,
            )

    async def _stale_on_error(
        self,
        lookup: cache_pb.LookupRequest,
        error: grpc.aio.AioRpcError,
        response_type: type[Message],
    ) -> Message | None:
        if error.code() not in STALE_IF_ERROR_CODES:
            return None
        retry = cache_pb.LookupRequest()
        retry.CopyFrom(lookup)
        retry.request_lease = False
        retry.origin_failed = True
        answer = await self._lookup(retry)
        if answer is None or answer.result == cache_pb.LOOKUP_RESULT_MISS:
            return None
        return _parse(response_type, answer.value)

    def _refresh_later(
        self,
        method: CachedMethod,
        key: str,
        vary: Mapping[str, str],
        request: Message,
        invoke: Callable[[], Awaitable[Message]],
        answer: Any,
    ) -> None:
        # Stale-while-revalidate: this caller got the stale value and the
        # lease; the refill runs behind it.
        async def refresh() -> None:
            try:
                response = await invoke()
            except grpc.aio.AioRpcError as error:
                logger.warning("background refresh failed (%s)", error.code().name)
                return
            await self._store(method, key, vary, request, response, answer.lease_token)

        task = asyncio.get_running_loop().create_task(refresh())
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)


class CachingInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Routes the configured unary RPCs of a channel through a ResponseCache."""

    def __init__(self, response_cache: ResponseCache) -> None:
        self._cache = response_cache
        self._response_types: dict[str, type[Message]] = {}

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        method = client_call_details.method
        path = method.decode() if isinstance(method, bytes) else method
        if self._cache.method(path) is None:
            return await continuation(client_call_details, request)

        async def invoke() -> Message:
            call = await continuation(client_call_details, request)
            return await call

        return await self._cache.call(
            path,
            request,
            invoke,
            self._response_type(path),
            client_call_details.metadata,
        )

    def _response_type(self, path: str) -> type[Message]:
        response_type = self._response_types.get(path)
        if response_type is None:
            service, _, name = path.strip("/").rpartition("/")
            pool = descriptor_pool.Default()
            descriptor = pool.FindServiceByName(service).FindMethodByName(name)
            response_type = message_factory.GetMessageClass(descriptor.output_type)
            self._response_types[path] = response_type
        return response_type


def _digest(kind: str, identity: str) -> str:
    text = hashlib.sha256(f"{kind}\0{identity}".encode()).hexdigest()[:32]
    return f"{kind}-{text}"


def _as_mapping(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """Text metadata by lower-case name; repeated values joined by ","."""
    values: dict[str, list[str]] = {}
    for name, value in metadata or ():
        if isinstance(value, str):
            values.setdefault(name.lower(), []).append(value)
    return {name: ",".join(found) for name, found in values.items()}


def _parse(response_type: type[Message], value: bytes) -> Message | None:
    try:
        return response_type.FromString(value)
    except DecodeError:
        logger.warning(
            "cached value does not parse as %s; ignored", response_type.__name__
        )
        return None
