"""The gRPC face of the cache: request validation and mapping to the engine."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping

from empire.cache.v1 import cache_service_pb2 as pb
from empire.cache.v1 import cache_service_pb2_grpc as pb_grpc
from services.cache.coherence import (
    KIND_KEY,
    KIND_PREFIX,
    KIND_ROUTE,
    KIND_TAG,
    Selector,
)
from services.cache.engine import CacheEngine, LookupAnswer
from services.cache.routes import (
    MAX_SECONDS,
    route_from_proto,
    route_to_proto,
    validate_route_id,
)
from shared.errors import EmpireError, InvalidArgument, NotFound
from shared.pagination import page_size

logger = logging.getLogger(__name__)

MAX_TAGS = 32
MAX_TAG_BYTES = 128
MAX_VARY_VALUE_BYTES = 1024
MAX_WAIT_MS = 30_000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_RESULTS = {
    "hit": pb.LOOKUP_RESULT_HIT,
    "stale": pb.LOOKUP_RESULT_STALE,
    "miss": pb.LOOKUP_RESULT_MISS,
}
_TIERS = {
    "l1": pb.CACHE_TIER_L1,
    "l2": pb.CACHE_TIER_L2,
    "none": pb.CACHE_TIER_UNSPECIFIED,
}


class CacheServicer(pb_grpc.CacheServiceServicer):
    def __init__(
        self, engine: CacheEngine, *, max_key_bytes: int, max_value_bytes: int
    ) -> None:
        self._engine = engine
        self._max_key_bytes = max_key_bytes
        self._max_value_bytes = max_value_bytes

    async def PutRouteConfig(
        self, request: pb.PutRouteConfigRequest, context: object
    ) -> pb.PutRouteConfigResponse:
        if not request.HasField("route_config"):
            raise InvalidArgument(
                "route_config", "is required", reason="MISSING_ROUTE_CONFIG"
            )
        # `source` and `update_time` are output only: whatever the caller sent,
        # even a time out of the Timestamp range, which would not convert.
        config = pb.RouteConfig()
        config.CopyFrom(request.route_config)
        config.ClearField("update_time")
        route = dataclasses.replace(
            route_from_proto(config), source=pb.CONFIG_SOURCE_API
        )
        stored = await self._engine.routes.put(route)
        await self._engine.publish_config_change(stored.route_id)
        logger.info("route %s configured (%s)", stored.route_id, stored.policy.name)
        return pb.PutRouteConfigResponse(route_config=route_to_proto(stored))

    async def GetRouteConfig(
        self, request: pb.GetRouteConfigRequest, context: object
    ) -> pb.GetRouteConfigResponse:
        route_id = validate_route_id(request.route_id)
        route = await self._engine.routes.refresh(route_id)
        if route is None:
            raise NotFound(
                f"route {route_id!r} is not configured", reason="ROUTE_NOT_FOUND"
            )
        return pb.GetRouteConfigResponse(route_config=route_to_proto(route))

    async def ListRouteConfigs(
        self, request: pb.ListRouteConfigsRequest, context: object
    ) -> pb.ListRouteConfigsResponse:
        size = page_size(
            request.page_size,
            default=DEFAULT_PAGE_SIZE,
            maximum=MAX_PAGE_SIZE,
            over_maximum="reject",
        )
        routes, next_token = await self._engine.routes.page(size, request.page_token)
        return pb.ListRouteConfigsResponse(
            route_configs=[route_to_proto(route) for route in routes],
            next_page_token=next_token,
        )

    async def DeleteRouteConfig(
        self, request: pb.DeleteRouteConfigRequest, context: object
    ) -> pb.DeleteRouteConfigResponse:
        route_id = validate_route_id(request.route_id)
        if await self._engine.routes.refresh(route_id) is None:
            raise NotFound(
                f"route {route_id!r} is not configured", reason="ROUTE_NOT_FOUND"
            )
        # Purged first: when the shared tier is away this raises UNAVAILABLE
        # with the config still in place, so a retry purges what is left.
        count = await self._engine.invalidate(Selector(KIND_ROUTE, route_id, ""))
        if not await self._engine.routes.delete(route_id):
            raise NotFound(
                f"route {route_id!r} is not configured", reason="ROUTE_NOT_FOUND"
            )
        await self._engine.publish_config_change(route_id)
        # Once more, now that no replica stores under the route any longer:
        # what was stored between the first purge and the delete goes too,
        # so a route created again with this id starts empty.
        try:
            count += await self._engine.invalidate(Selector(KIND_ROUTE, route_id, ""))
        except EmpireError as error:
            logger.warning(
                "route %s deleted; its last purge failed (%s): purge it again",
                route_id,
                error.reason,
            )
        logger.info("route %s deleted; %s entries invalidated", route_id, count)
        return pb.DeleteRouteConfigResponse(invalidated_count=count)

    async def Lookup(
        self, request: pb.LookupRequest, context: object
    ) -> pb.LookupResponse:
        route = await self._engine.routes.resolve(validate_route_id(request.route_id))
        key = self._validate_key(request.key, "key")
        if not 0 <= request.max_wait_ms <= MAX_WAIT_MS:
            raise InvalidArgument(
                "max_wait_ms", f"must be 0 to {MAX_WAIT_MS}", reason="INVALID_MAX_WAIT"
            )
        answer = await self._engine.lookup(
            route,
            key,
            _validate_vary(request.vary, route.vary_on),
            request_lease=request.request_lease,
            max_wait_ms=request.max_wait_ms,
            origin_failed=request.origin_failed,
        )
        return _lookup_response(answer)

    async def Store(
        self, request: pb.StoreRequest, context: object
    ) -> pb.StoreResponse:
        route = await self._engine.routes.resolve(validate_route_id(request.route_id))
        key = self._validate_key(request.key, "key")
        if len(request.value) > self._max_value_bytes:
            raise InvalidArgument(
                "value",
                f"is {len(request.value)} bytes; at most {self._max_value_bytes}",
                reason="VALUE_TOO_LARGE",
            )
        ttl: int | None = None
        if request.HasField("ttl_seconds"):
            ttl = request.ttl_seconds
            if not 1 <= ttl <= MAX_SECONDS:
                raise InvalidArgument(
                    "ttl_seconds", f"must be 1 to {MAX_SECONDS}", reason="INVALID_TTL"
                )
        stored, ttl_seconds = await self._engine.store(
            route,
            key,
            _validate_vary(request.vary, route.vary_on),
            request.value,
            _validate_tags(request.tags),
            ttl,
            request.lease_token,
        )
        return pb.StoreResponse(stored=stored, ttl_seconds=ttl_seconds)

    async def Invalidate(
        self, request: pb.InvalidateRequest, context: object
    ) -> pb.InvalidateResponse:
        selector = await self._selector(request)
        count = await self._engine.invalidate(selector)
        logger.info(
            "invalidated by %s in route %s: %s entries (soft=%s)",
            selector.kind,
            selector.route_id or "*",
            count,
            selector.soft,
        )
        return pb.InvalidateResponse(invalidated_count=count)

    async def GetStats(
        self, request: pb.GetStatsRequest, context: object
    ) -> pb.GetStatsResponse:
        engine = self._engine
        engine.refresh_gauges()
        if request.route_id:
            route_ids = [validate_route_id(request.route_id)]
            await engine.routes.resolve(route_ids[0])
        else:
            # Every configured route too: its shared entries count even on a
            # replica that has not served it yet.
            route_ids = sorted(
                set(engine.stats.route_ids()) | set(engine.routes.route_ids())
            )
        routes = []
        for route_id in route_ids:
            entries, size = engine.route_usage(route_id)
            stats = engine.stats.to_proto(
                [route_id], entries, size, engine.l1.route_evictions(route_id)
            )
            stats.shared_entries = await engine.shared_entries(route_id)
            routes.append(pb.RouteStats(route_id=route_id, stats=stats))
        if request.route_id:
            overall = routes[0].stats
        else:
            entries, size = engine.route_usage(None)
            overall = engine.stats.to_proto(
                route_ids, entries, size, engine.l1.evictions
            )
            overall.shared_entries = sum(r.stats.shared_entries for r in routes)
        return pb.GetStatsResponse(
            overall=overall,
            routes=routes,
            replica_id=engine.replica_id,
            shared_tier_connected=engine.shared_tier_up,
        )

    async def _selector(self, request: pb.InvalidateRequest) -> Selector:
        which = request.WhichOneof("selector")
        if which == "tag":
            if request.route_id:
                raise InvalidArgument(
                    "route_id",
                    "must be empty with tag, which reaches every route",
                    reason="ROUTE_WITH_TAG",
                )
            return Selector(
                KIND_TAG, "", _validate_tag(request.tag, "tag"), request.soft
            )
        route = await self._engine.routes.resolve(validate_route_id(request.route_id))
        if which == "key":
            key = self._validate_key(request.key, "key")
            return Selector(KIND_KEY, route.route_id, key, request.soft)
        if which == "key_prefix":
            prefix = self._validate_key(request.key_prefix, "key_prefix")
            return Selector(KIND_PREFIX, route.route_id, prefix, request.soft)
        return Selector(KIND_ROUTE, route.route_id, "", request.soft)

    def _validate_key(self, key: str, field_name: str) -> str:
        if not key:
            raise InvalidArgument(field_name, "is required", reason="MISSING_KEY")
        size = len(key.encode())
        if size > self._max_key_bytes:
            raise InvalidArgument(
                field_name,
                f"is {size} bytes; at most {self._max_key_bytes}",
                reason="KEY_TOO_LARGE",
            )
        if not key.isprintable():
            raise InvalidArgument(
                field_name, "must not contain control characters", reason="INVALID_KEY"
            )
        return key


def _validate_tag(tag: str, field_name: str) -> str:
    if not tag:
        raise InvalidArgument(field_name, "must not be empty", reason="INVALID_TAG")
    if len(tag.encode()) > MAX_TAG_BYTES or not tag.isprintable():
        raise InvalidArgument(
            field_name,
            f"must be at most {MAX_TAG_BYTES} bytes without control characters",
            reason="INVALID_TAG",
        )
    return tag


def _validate_tags(tags: Iterable[str]) -> tuple[str, ...]:
    values = list(tags)
    if len(values) > MAX_TAGS:
        raise InvalidArgument(
            "tags", f"at most {MAX_TAGS} tags", reason="TOO_MANY_TAGS"
        )
    for index, tag in enumerate(values):
        _validate_tag(tag, f"tags[{index}]")
    return tuple(sorted(set(values)))


def _validate_vary(vary: Mapping[str, str], vary_on: tuple[str, ...]) -> dict[str, str]:
    # Names the route does not vary on are ignored, so they never split the cache.
    picked: dict[str, str] = {}
    for name in vary_on:
        value = vary.get(name, "")
        if len(value.encode()) > MAX_VARY_VALUE_BYTES:
            raise InvalidArgument(
                f"vary[{name}]",
                f"must be at most {MAX_VARY_VALUE_BYTES} bytes",
                reason="VARY_VALUE_TOO_LARGE",
            )
        picked[name] = value
    return picked


def _lookup_response(answer: LookupAnswer) -> pb.LookupResponse:
    return pb.LookupResponse(
        result=_RESULTS[answer.result],  # type: ignore[arg-type]
        value=answer.value,
        age_ms=answer.age_ms,
        tags=answer.tags,
        lease_token=answer.lease_token,
        lease_timeout_ms=answer.lease_timeout_ms,
        waited_for_fill=answer.waited,
        tier=_TIERS[answer.tier],  # type: ignore[arg-type]
        ttl_remaining_ms=answer.ttl_remaining_ms,
    )
