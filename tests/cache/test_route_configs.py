"""Route configs: CRUD over gRPC on both databases, validation, the config file."""

from __future__ import annotations

import json

import grpc
import pytest

from empire.cache.v1 import cache_service_pb2 as pb
from services.cache.config_file import load_config_file
from services.cache.routes import pattern_matches, route_from_proto, split_pattern
from services.cache.settings import load_settings
from shared.config import Env, SettingsError
from tests.cache.conftest import cache_settings, put_route, route_config, running_cache
from tests.harness.grpc_errors import bad_request, error_info


async def test_route_configs_round_trip_and_page(database_url, issuer):
    async with running_cache(cache_settings(database_url), issuer) as client:
        for index in range(5):
            await put_route(
                client,
                route_id=f"route_{index}",
                vary_on=["principal"],
                source=pb.CONFIG_SOURCE_FILE,  # output only: ignored
            )
        got = await client.GetRouteConfig(pb.GetRouteConfigRequest(route_id="route_3"))
        first = await client.ListRouteConfigs(pb.ListRouteConfigsRequest(page_size=2))
        second = await client.ListRouteConfigs(
            pb.ListRouteConfigsRequest(page_size=2, page_token=first.next_page_token)
        )
        third = await client.ListRouteConfigs(
            pb.ListRouteConfigsRequest(page_size=2, page_token=second.next_page_token)
        )
        await client.DeleteRouteConfig(pb.DeleteRouteConfigRequest(route_id="route_3"))
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await client.GetRouteConfig(pb.GetRouteConfigRequest(route_id="route_3"))

    assert got.route_config.route_pattern == "/api/offers/*"
    assert list(got.route_config.vary_on) == ["principal"]
    assert got.route_config.source == pb.CONFIG_SOURCE_API
    assert got.route_config.update_time.seconds > 0
    ids = [c.route_id for page in (first, second, third) for c in page.route_configs]
    assert ids == [f"route_{i}" for i in range(5)]
    assert third.next_page_token == ""
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(gone.value).reason == "ROUTE_NOT_FOUND"


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        pytest.param(
            {"route_id": ""}, "route_config.route_id", "MISSING_ROUTE_ID", id="no-id"
        ),
        pytest.param(
            {"route_id": "Bad Id"}, "route_config.route_id", "INVALID_ROUTE_ID", id="id"
        ),
        pytest.param(
            {"route_pattern": "api/offers"},
            "route_config.route_pattern",
            "INVALID_ROUTE_PATTERN",
            id="relative-pattern",
        ),
        pytest.param(
            {"route_pattern": "/api/**/offers"},
            "route_config.route_pattern",
            "INVALID_ROUTE_PATTERN",
            id="inner-double-star",
        ),
        pytest.param(
            {"route_pattern": "/api/off*"},
            "route_config.route_pattern",
            "INVALID_ROUTE_PATTERN",
            id="partial-star",
        ),
        pytest.param(
            {"policy": pb.CACHE_POLICY_UNSPECIFIED},
            "route_config.policy",
            "INVALID_POLICY",
            id="no-policy",
        ),
        pytest.param(
            {"ttl_seconds": -5},
            "route_config.ttl_seconds",
            "NEGATIVE_TTL",
            id="negative-ttl",
        ),
        pytest.param(
            {"stale_if_error_seconds": -1},
            "route_config.stale_if_error_seconds",
            "NEGATIVE_TTL",
            id="negative-window",
        ),
        pytest.param(
            {
                "policy": pb.CACHE_POLICY_CONSERVATIVE,
                "stale_while_revalidate_seconds": 10,
            },
            "route_config.stale_while_revalidate_seconds",
            "CONSERVATIVE_WITH_STALE_WINDOW",
            id="conservative-stale",
        ),
        pytest.param(
            {
                "policy": pb.CACHE_POLICY_DYNAMIC,
                "min_ttl_seconds": 400,
                "max_ttl_seconds": 900,
            },
            "route_config.min_ttl_seconds",
            "INVALID_TTL_BOUNDS",
            id="dynamic-bounds",
        ),
        pytest.param(
            {"vary_on": ["Accept Language"]},
            "route_config.vary_on[0]",
            "INVALID_VARY_NAME",
            id="vary-name",
        ),
    ],
)
async def test_bad_route_config_is_invalid_argument_naming_the_field(
    sqlite_cache_url, issuer, fields, field, reason
):
    async with running_cache(cache_settings(sqlite_cache_url), issuer) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await put_route(client, **fields)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == reason
    assert bad_request(caught.value).field_violations[0].field == field


async def test_bad_page_token_is_invalid_argument(sqlite_cache_url, issuer):
    async with running_cache(cache_settings(sqlite_cache_url), issuer) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.ListRouteConfigs(
                pb.ListRouteConfigsRequest(page_token="nonsense")
            )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "INVALID_PAGE_TOKEN"


async def test_config_file_routes_are_loaded_at_start(
    sqlite_cache_url, issuer, tmp_path
):
    path = tmp_path / "routes.json"
    path.write_text(
        json.dumps(
            {
                "routes": [
                    {
                        "routeId": "api_offers",
                        "routePattern": "/api/offers/*",
                        "policy": "aggressive",
                        "ttlSeconds": 300,
                        "staleIfErrorSeconds": 600,
                    },
                    {
                        "route_id": "never",
                        "route_pattern": "/x/**",
                        "policy": "NO_CACHE",
                    },
                ]
            }
        )
    )
    settings = load_settings(
        Env(
            {
                "EMPIRE_CACHE_DATABASE_URL": sqlite_cache_url,
                "EMPIRE_CACHE_CONFIG_FILE": str(path),
            }
        )
    )
    async with running_cache(
        cache_settings(sqlite_cache_url, file_routes=settings.file_routes), issuer
    ) as client:
        listed = await client.ListRouteConfigs(pb.ListRouteConfigsRequest())

    by_id = {config.route_id: config for config in listed.route_configs}
    assert by_id["api_offers"].policy == pb.CACHE_POLICY_AGGRESSIVE
    assert by_id["api_offers"].stale_if_error_seconds == 600
    assert by_id["api_offers"].source == pb.CONFIG_SOURCE_FILE
    assert by_id["never"].policy == pb.CACHE_POLICY_NO_CACHE


def test_bad_config_file_stops_the_start_naming_the_variable(tmp_path):
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"routes": [{"route_id": "x", "policy": "aggressive"}]}))

    with pytest.raises(SettingsError) as caught:
        load_config_file(path)

    assert "EMPIRE_CACHE_CONFIG_FILE" in str(caught.value)
    assert "route_pattern" in str(caught.value)


def test_bad_settings_name_the_variable():
    with pytest.raises(SettingsError) as caught:
        load_settings(Env({"EMPIRE_CACHE_L1_MAX_BYTES": "lots"}))

    assert "EMPIRE_CACHE_L1_MAX_BYTES" in str(caught.value)


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/api/offers/*", "/api/offers/1", True),
        ("/api/offers/*", "/api/offers/1/reviews", False),
        ("/api/offers/*", "/api/offers/", False),
        ("/api/**", "/api/offers/1/reviews", True),
        ("/api/**", "/api", False),
        (
            "/empire.llm.v1.LlmService/Complete",
            "/empire.llm.v1.LlmService/Complete",
            True,
        ),
    ],
)
def test_route_patterns_match_paths(pattern, path, expected):
    assert pattern_matches(split_pattern(pattern), path) is expected


def test_dynamic_bounds_default_around_the_ttl():
    route = route_from_proto(
        route_config(policy=pb.CACHE_POLICY_DYNAMIC, ttl_seconds=100)
    )

    assert (route.min_ttl_seconds, route.max_ttl_seconds) == (25, 400)
