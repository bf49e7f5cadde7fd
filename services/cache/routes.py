"""Route configs: validation, pattern matching, and what a policy means for an entry."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from empire.cache.v1 import cache_service_pb2 as pb
from shared.errors import InvalidArgument

MAX_SECONDS = 365 * 24 * 3600
MAX_PATTERN_CHARS = 512
MAX_VARY_NAMES = 16
_ROUTE_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_VARY_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_LITERAL_SEGMENT = re.compile(r"[A-Za-z0-9._~:@!$&'()+,;=-]+")


class Policy(enum.IntEnum):
    AGGRESSIVE = pb.CACHE_POLICY_AGGRESSIVE
    CONSERVATIVE = pb.CACHE_POLICY_CONSERVATIVE
    DYNAMIC = pb.CACHE_POLICY_DYNAMIC
    NO_CACHE = pb.CACHE_POLICY_NO_CACHE


class Freshness(enum.Enum):
    FRESH = "hit"
    STALE = "stale"
    EXPIRED = "miss"


@dataclass(frozen=True)
class Route:
    """A validated route config."""

    route_id: str
    pattern: str
    policy: Policy
    ttl_seconds: int
    stale_while_revalidate_seconds: int = 0
    stale_if_error_seconds: int = 0
    vary_on: tuple[str, ...] = ()
    min_ttl_seconds: int = 0
    max_ttl_seconds: int = 0
    source: int = pb.CONFIG_SOURCE_API
    update_time: float = 0.0
    _pattern_parts: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def stores(self) -> bool:
        return self.policy is not Policy.NO_CACHE

    def retention_ms(self, ttl_seconds: int) -> int:
        """How long an entry stored with `ttl_seconds` is kept in a tier.

        DYNAMIC entries are kept one TTL past their windows so that the next
        fill can still compare against the value it replaces.
        """
        extra = max(self.stale_while_revalidate_seconds, self.stale_if_error_seconds)
        if self.policy is Policy.DYNAMIC:
            extra = max(extra, ttl_seconds)
        return (ttl_seconds + extra) * 1000

    def freshness(
        self, fresh_until_ms: int, now_ms: int, origin_failed: bool
    ) -> Freshness:
        """Whether an entry fresh until `fresh_until_ms` may be served at `now_ms`."""
        if now_ms < fresh_until_ms:
            return Freshness.FRESH
        if self.policy is Policy.CONSERVATIVE:
            return Freshness.EXPIRED
        past = now_ms - fresh_until_ms
        if past < self.stale_while_revalidate_seconds * 1000:
            return Freshness.STALE
        if origin_failed and past < self.stale_if_error_seconds * 1000:
            return Freshness.STALE
        return Freshness.EXPIRED

    def matches(self, path: str) -> bool:
        """True when a request path falls under this route's pattern."""
        return pattern_matches(self._pattern_parts or split_pattern(self.pattern), path)


def adapt_ttl(previous_ttl: int, value_changed: bool, route: Route) -> int:
    """The next TTL of a DYNAMIC key: doubled while the value holds, else halved."""
    ttl = previous_ttl // 2 if value_changed else previous_ttl * 2
    # Clamped both ways: the previous TTL may lie outside the bounds (a store
    # with a TTL override, or bounds changed since).
    return min(route.max_ttl_seconds, max(route.min_ttl_seconds, ttl))


def split_pattern(pattern: str) -> tuple[str, ...]:
    return tuple(pattern[1:].split("/"))


def pattern_matches(parts: tuple[str, ...], path: str) -> bool:
    if not path.startswith("/"):
        return False
    segments = path[1:].split("/")
    for index, part in enumerate(parts):
        if part == "**":
            return len(segments) > index
        if index >= len(segments):
            return False
        if part != "*" and part != segments[index]:
            return False
        if part == "*" and segments[index] == "":
            return False
    return len(segments) == len(parts)


def route_from_proto(config: pb.RouteConfig, *, prefix: str = "route_config.") -> Route:
    """Validates a RouteConfig message; raises InvalidArgument naming the field."""
    route_id = validate_route_id(config.route_id, prefix + "route_id")
    parts = _validate_pattern(config.route_pattern, prefix + "route_pattern")
    if config.policy not in Policy._value2member_map_:
        raise InvalidArgument(
            prefix + "policy",
            "must be AGGRESSIVE, CONSERVATIVE, DYNAMIC or NO_CACHE",
            reason="INVALID_POLICY",
        )
    policy = Policy(config.policy)
    ttl = _seconds(config.ttl_seconds, prefix + "ttl_seconds")
    swr = _seconds(
        config.stale_while_revalidate_seconds,
        prefix + "stale_while_revalidate_seconds",
    )
    sie = _seconds(config.stale_if_error_seconds, prefix + "stale_if_error_seconds")
    _check_policy_fields(policy, ttl, swr, sie, prefix)
    min_ttl, max_ttl = _dynamic_bounds(policy, config, ttl, prefix)
    return Route(
        route_id=route_id,
        pattern=config.route_pattern,
        policy=policy,
        ttl_seconds=ttl,
        stale_while_revalidate_seconds=swr,
        stale_if_error_seconds=sie,
        vary_on=_validate_vary(config.vary_on, prefix + "vary_on"),
        min_ttl_seconds=min_ttl,
        max_ttl_seconds=max_ttl,
        source=config.source or pb.CONFIG_SOURCE_API,
        update_time=config.update_time.ToSeconds()
        if config.HasField("update_time")
        else 0.0,
        _pattern_parts=parts,
    )


def route_to_proto(route: Route) -> pb.RouteConfig:
    config = pb.RouteConfig(
        route_id=route.route_id,
        route_pattern=route.pattern,
        policy=int(route.policy),  # type: ignore[arg-type]
        ttl_seconds=route.ttl_seconds,
        stale_while_revalidate_seconds=route.stale_while_revalidate_seconds,
        stale_if_error_seconds=route.stale_if_error_seconds,
        vary_on=route.vary_on,
        min_ttl_seconds=route.min_ttl_seconds,
        max_ttl_seconds=route.max_ttl_seconds,
        source=route.source,  # type: ignore[arg-type]
    )
    if route.update_time:
        config.update_time.FromMilliseconds(int(route.update_time * 1000))
    return config


def validate_route_id(route_id: str, field_name: str = "route_id") -> str:
    if not route_id:
        raise InvalidArgument(field_name, "is required", reason="MISSING_ROUTE_ID")
    if not _ROUTE_ID.fullmatch(route_id):
        raise InvalidArgument(
            field_name,
            "must be 1 to 64 of a-z, 0-9, '_', '-', '.', starting with a-z or 0-9",
            reason="INVALID_ROUTE_ID",
        )
    return route_id


def _validate_pattern(pattern: str, field_name: str) -> tuple[str, ...]:
    if not pattern:
        raise InvalidArgument(field_name, "is required", reason="MISSING_ROUTE_PATTERN")
    if len(pattern) > MAX_PATTERN_CHARS or not pattern.startswith("/"):
        raise InvalidArgument(
            field_name,
            f"must start with '/' and be at most {MAX_PATTERN_CHARS} characters",
            reason="INVALID_ROUTE_PATTERN",
        )
    parts = split_pattern(pattern)
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "*" or (part == "**" and last):
            continue
        if not _LITERAL_SEGMENT.fullmatch(part):
            raise InvalidArgument(
                field_name,
                f"segment {index + 1} must be a literal, '*', or a final '**'",
                reason="INVALID_ROUTE_PATTERN",
            )
    return parts


def _seconds(value: int, field_name: str) -> int:
    if value < 0:
        raise InvalidArgument(field_name, "must not be negative", reason="NEGATIVE_TTL")
    if value > MAX_SECONDS:
        raise InvalidArgument(
            field_name, f"must be at most {MAX_SECONDS}", reason="TTL_TOO_LONG"
        )
    return value


def _check_policy_fields(
    policy: Policy, ttl: int, swr: int, sie: int, prefix: str
) -> None:
    if policy is Policy.NO_CACHE:
        for name, value in (
            ("ttl_seconds", ttl),
            ("stale_while_revalidate_seconds", swr),
            ("stale_if_error_seconds", sie),
        ):
            if value:
                raise InvalidArgument(
                    prefix + name, "must be 0 for NO_CACHE", reason="NO_CACHE_WITH_TTL"
                )
        return
    if ttl == 0:
        raise InvalidArgument(
            prefix + "ttl_seconds", "must be at least 1", reason="MISSING_TTL"
        )
    if policy is Policy.CONSERVATIVE and (swr or sie):
        name = "stale_while_revalidate_seconds" if swr else "stale_if_error_seconds"
        raise InvalidArgument(
            prefix + name,
            "must be 0 for CONSERVATIVE, which never serves past its TTL",
            reason="CONSERVATIVE_WITH_STALE_WINDOW",
        )


def _dynamic_bounds(
    policy: Policy, config: pb.RouteConfig, ttl: int, prefix: str
) -> tuple[int, int]:
    if policy is not Policy.DYNAMIC:
        return 0, 0
    min_ttl = _seconds(config.min_ttl_seconds, prefix + "min_ttl_seconds")
    max_ttl = _seconds(config.max_ttl_seconds, prefix + "max_ttl_seconds")
    if min_ttl == 0 and max_ttl == 0:
        # Unset bounds default to a factor of four either way.
        return max(1, ttl // 4), min(MAX_SECONDS, ttl * 4)
    if min_ttl < 1 or min_ttl > ttl:
        raise InvalidArgument(
            prefix + "min_ttl_seconds",
            "must be between 1 and ttl_seconds",
            reason="INVALID_TTL_BOUNDS",
        )
    if max_ttl < ttl:
        raise InvalidArgument(
            prefix + "max_ttl_seconds",
            "must be at least ttl_seconds",
            reason="INVALID_TTL_BOUNDS",
        )
    return min_ttl, max_ttl


def _validate_vary(names: Iterable[str], field_name: str) -> tuple[str, ...]:
    values = list(names)
    if len(values) > MAX_VARY_NAMES:
        raise InvalidArgument(
            field_name, f"at most {MAX_VARY_NAMES} names", reason="TOO_MANY_VARY_NAMES"
        )
    for index, name in enumerate(values):
        if not _VARY_NAME.fullmatch(name):
            raise InvalidArgument(
                f"{field_name}[{index}]",
                "must be 1 to 64 of a-z, 0-9, '_', '-', '.'",
                reason="INVALID_VARY_NAME",
            )
    if len(set(values)) != len(values):
        raise InvalidArgument(
            field_name, "names must be unique", reason="DUPLICATE_VARY_NAME"
        )
    return tuple(sorted(values))
