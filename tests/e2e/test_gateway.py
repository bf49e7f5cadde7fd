"""A client's view of the suite through the gateway: REST, gRPC and grpc-web."""

from __future__ import annotations

import base64
import secrets

import grpc
import pytest

from empire.llm.v1 import llm_service_pb2
from empire.vault.v1 import vault_service_pb2, vault_service_pb2_grpc
from tests.e2e.calls import RestAnswer, b64, grpc_web_call, rest
from tests.e2e.conftest import Suite
from tests.harness.fake_providers import DEFAULT_REPLY, server_error


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def _key_id(prefix: str) -> str:
    return f"{prefix}/{secrets.token_hex(4)}"


def test_bootstrap_credential_exchanges_for_a_token_over_rest(suite: Suite) -> None:
    answer = rest(
        suite.url,
        "POST",
        "/api/empire-security/api-keys:exchange",
        {"api_key": suite.bootstrap_api_key},
    )

    assert answer.status == 200, answer.body
    assert answer.body["token_type"].lower() == "bearer"
    assert answer.body["access_token"].count(".") == 2


def test_exchange_refuses_a_wrong_credential_over_rest(suite: Suite) -> None:
    answer = rest(
        suite.url,
        "POST",
        "/api/empire-security/api-keys:exchange",
        {"api_key": "esk_notarealkey0_" + "a" * 38},
    )

    assert answer.status in (400, 401)
    assert "esk_notarealkey0" not in str(answer.body)


def test_secret_stored_over_rest_reads_back_over_rest_and_grpc(suite: Suite) -> None:
    key_id = _key_id("e2e")
    value = secrets.token_bytes(24)

    stored = rest(
        suite.url,
        "POST",
        "/api/empire-security/secrets",
        {"key_id": key_id, "value": b64(value), "rotation_frequency_days": 90},
        token=suite.admin_token,
    )
    over_rest = rest(
        suite.url,
        "GET",
        f"/api/empire-security/secrets/{key_id}",
        token=suite.admin_token,
    )
    with grpc.insecure_channel(suite.gateway.target) as channel:
        over_grpc = vault_service_pb2_grpc.VaultServiceStub(channel).GetSecret(
            vault_service_pb2.GetSecretRequest(key_id=key_id),
            metadata=_bearer(suite.admin_token),
            timeout=10,
        )

    assert stored.status == 200, stored.body
    assert over_rest.status == 200, over_rest.body
    assert base64.b64decode(over_rest.body["value"]) == value
    assert over_grpc.value == value
    assert over_grpc.version == int(over_rest.body["version"])


def test_secret_stored_over_grpc_reads_back_over_rest(suite: Suite) -> None:
    key_id = _key_id("e2e")
    value = secrets.token_bytes(24)

    with grpc.insecure_channel(suite.gateway.target) as channel:
        stored = vault_service_pb2_grpc.VaultServiceStub(channel).PutSecret(
            vault_service_pb2.PutSecretRequest(key_id=key_id, value=value),
            metadata=_bearer(suite.admin_token),
            timeout=10,
        )
    over_rest = rest(
        suite.url,
        "GET",
        f"/api/empire-security/secrets/{key_id}",
        token=suite.admin_token,
    )

    assert over_rest.status == 200, over_rest.body
    assert base64.b64decode(over_rest.body["value"]) == value
    assert int(over_rest.body["version"]) == stored.version


def test_gateway_refuses_a_call_without_a_token(suite: Suite) -> None:
    over_rest = rest(suite.url, "GET", "/api/empire-security/secrets/e2e/anything")
    with grpc.insecure_channel(suite.gateway.target) as channel:
        stub = vault_service_pb2_grpc.VaultServiceStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetSecret(
                vault_service_pb2.GetSecretRequest(key_id="e2e/x"), timeout=10
            )
        with pytest.raises(grpc.RpcError) as forged:
            stub.GetSecret(
                vault_service_pb2.GetSecretRequest(key_id="e2e/x"),
                metadata=_bearer("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."),
                timeout=10,
            )

    assert over_rest.status == 401
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert forged.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_without_the_scope_is_refused(suite: Suite) -> None:
    narrow = suite.exchange(scopes=["cache:read"])

    over_rest = rest(
        suite.url, "GET", "/api/empire-security/secrets/e2e/anything", token=narrow
    )
    with grpc.insecure_channel(suite.gateway.target) as channel:
        stub = vault_service_pb2_grpc.VaultServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetSecret(
                vault_service_pb2.GetSecretRequest(key_id="e2e/anything"),
                metadata=_bearer(narrow),
                timeout=10,
            )

    assert over_rest.status == 403, over_rest.body
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_cache_route_configured_over_rest_serves_a_hit(suite: Suite) -> None:
    route_id = f"e2e-offers-{secrets.token_hex(3)}"
    token = suite.admin_token

    configured = rest(
        suite.url,
        "POST",
        "/api/empire-security/cache/config",
        {
            "route_config": {
                "route_id": route_id,
                "route_pattern": "/api/offers/*",
                "policy": "CACHE_POLICY_AGGRESSIVE",
                "ttl_seconds": 300,
            }
        },
        token=token,
    )
    lookup = {"route_id": route_id, "key": "/api/offers/42"}
    before = rest(suite.url, "POST", "/api/empire-security/cache/lookup", lookup, token)
    stored = rest(
        suite.url,
        "POST",
        "/api/empire-security/cache/store",
        {**lookup, "value": b64(b'{"offer": 42}')},
        token,
    )
    after = rest(suite.url, "POST", "/api/empire-security/cache/lookup", lookup, token)

    assert configured.status == 200, configured.body
    assert before.body["result"] == "LOOKUP_RESULT_MISS"
    assert stored.status == 200, stored.body
    assert after.body["result"] == "LOOKUP_RESULT_HIT"
    assert base64.b64decode(after.body["value"]) == b'{"offer": 42}'


def _configure_fake_provider(suite: Suite, route: str) -> str:
    provider_id = f"fake-openai-{secrets.token_hex(3)}"
    key_id = f"llm/{provider_id}"
    token = suite.admin_token
    stored = rest(
        suite.url,
        "POST",
        "/api/empire-security/secrets",
        {"key_id": key_id, "value": b64(b"sk-fake-provider-key")},
        token,
    )
    assert stored.status == 200, stored.body
    configured = rest(
        suite.url,
        "POST",
        "/api/empire-security/llm/config",
        {
            "provider": {
                "provider_id": provider_id,
                "kind": "PROVIDER_KIND_OPENAI",
                "endpoint": suite.provider.base_url,
                "model": "fake-model",
                "route": route,
                "priority": 1,
                "api_key_id": key_id,
            }
        },
        token,
    )
    assert configured.status == 200, configured.body
    return provider_id


def test_llm_completes_a_prompt_over_rest(suite: Suite) -> None:
    route = f"e2e-{secrets.token_hex(3)}"
    provider_id = _configure_fake_provider(suite, route)
    calls_before = suite.provider.completions

    answer = rest(
        suite.url,
        "POST",
        "/api/empire-security/llm/complete",
        {
            "route": route,
            "messages": [{"role": "ROLE_USER", "content": "Say the pangram."}],
            "max_tokens": 64,
        },
        suite.admin_token,
    )

    assert answer.status == 200, answer.body
    assert answer.body["content"] == DEFAULT_REPLY
    assert answer.body["provider_id"] == provider_id
    assert suite.provider.completions == calls_before + 1


def test_gateway_does_not_multiply_a_failing_providers_attempts(
    suite: Suite,
) -> None:
    """llm's own UNAVAILABLE (providers failed) is final: Envoy must not retry it."""
    route = f"e2e-{secrets.token_hex(3)}"
    _configure_fake_provider(suite, route)
    calls_before = suite.provider.completions
    suite.provider.inject(server_error(503), times=None)
    try:
        answer = rest(
            suite.url,
            "POST",
            "/api/empire-security/llm/complete",
            {
                "route": route,
                "messages": [{"role": "ROLE_USER", "content": "Anyone there?"}],
                "max_tokens": 16,
            },
            suite.admin_token,
        )
    finally:
        suite.provider.clear()

    assert answer.status == 503, answer.body
    assert _grpc_code(answer) == grpc.StatusCode.UNAVAILABLE.value[0]
    # One attempt and the one retry the service allows a provider by default
    # (EMPIRE_LLM_RETRIES_PER_PROVIDER=1); a gateway retry would triple it.
    assert suite.provider.completions - calls_before == 2


def test_llm_streams_a_completion_over_grpc_web(suite: Suite) -> None:
    route = f"e2e-{secrets.token_hex(3)}"
    _configure_fake_provider(suite, route)
    request = llm_service_pb2.StreamCompleteRequest(
        route=route,
        messages=[
            llm_service_pb2.Message(
                role=llm_service_pb2.ROLE_USER, content="Say the pangram."
            )
        ],
        max_tokens=64,
    )

    status, frames, trailers = grpc_web_call(
        suite.url,
        "/empire.llm.v1.LlmService/StreamComplete",
        request.SerializeToString(),
        suite.admin_token,
    )
    events = [llm_service_pb2.StreamCompleteResponse.FromString(f) for f in frames]
    kinds = [event.WhichOneof("event") for event in events]
    text = "".join(e.delta.content for e in events if e.WhichOneof("event") == "delta")

    assert status == 200
    assert trailers.get("grpc-status") == "0", trailers
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("delta") >= 2
    assert text == DEFAULT_REPLY


def test_grpc_web_without_a_token_is_unauthenticated(suite: Suite) -> None:
    request = llm_service_pb2.StreamCompleteRequest(route="e2e")

    _, frames, trailers = grpc_web_call(
        suite.url,
        "/empire.llm.v1.LlmService/StreamComplete",
        request.SerializeToString(),
        token=None,
    )

    assert frames == []
    assert trailers.get("grpc-status") == str(grpc.StatusCode.UNAUTHENTICATED.value[0])


def test_browser_preflight_is_answered_without_a_token(suite: Suite) -> None:
    answer = rest(
        suite.url,
        "OPTIONS",
        "/api/empire-security/secrets/e2e/anything",
        headers={
            "origin": "http://localhost:3000",
            "access-control-request-method": "GET",
            "access-control-request-headers": "authorization",
        },
    )

    assert answer.status == 200
    assert answer.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "authorization" in answer.headers["access-control-allow-headers"]


def _grpc_code(answer: RestAnswer) -> int:
    # The transcoder writes the status as a JSON google.rpc.Status when the
    # descriptor set holds the error detail types, else leaves the gRPC headers.
    if isinstance(answer.body, dict) and "code" in answer.body:
        return int(answer.body["code"])
    return int(answer.headers["grpc-status"])


def test_rest_errors_carry_the_http_status_of_their_grpc_code(suite: Suite) -> None:
    missing = rest(
        suite.url,
        "GET",
        "/api/empire-security/secrets/e2e/never-stored",
        token=suite.admin_token,
    )
    invalid = rest(
        suite.url,
        "POST",
        "/api/empire-security/secrets",
        {"key_id": "", "value": b64(b"x")},
        suite.admin_token,
    )
    unknown_path = rest(
        suite.url, "GET", "/api/empire-security/no-such-thing", token=suite.admin_token
    )

    assert missing.status == 404
    assert _grpc_code(missing) == grpc.StatusCode.NOT_FOUND.value[0]
    assert invalid.status == 400
    assert _grpc_code(invalid) == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert unknown_path.status == 404
