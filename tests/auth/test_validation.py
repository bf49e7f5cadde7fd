"""Malformed requests get INVALID_ARGUMENT naming the field, on every RPC."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2

from empire.auth.v1 import auth_service_pb2 as pb
from tests.auth.harness import AuthUnderTest
from tests.harness.grpc_errors import bad_request, error_info

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _claims(**values: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


CASES = [
    ("IssueToken", pb.IssueTokenRequest(), "subject"),
    ("IssueToken", pb.IssueTokenRequest(subject="a" * 300), "subject"),
    ("IssueToken", pb.IssueTokenRequest(subject="bad\nname"), "subject"),
    (
        "IssueToken",
        pb.IssueTokenRequest(subject="a", scopes=["BAD SCOPE"]),
        "scopes[0]",
    ),
    (
        "IssueToken",
        pb.IssueTokenRequest(subject="a", scopes=["x:y", "*x"]),
        "scopes[1]",
    ),
    ("IssueToken", pb.IssueTokenRequest(subject="a", roles=["nope"]), "roles[0]"),
    ("IssueToken", pb.IssueTokenRequest(subject="a", audience="evil"), "audience"),
    (
        "IssueToken",
        pb.IssueTokenRequest(subject="a", ttl=duration_pb2.Duration(seconds=1)),
        "ttl",
    ),
    (
        "IssueToken",
        pb.IssueTokenRequest(
            subject="a", ttl=duration_pb2.Duration(seconds=60, nanos=5)
        ),
        "ttl",
    ),
    (
        "IssueToken",
        pb.IssueTokenRequest(subject="a", claims=_claims(blob="x" * 5000)),
        "claims",
    ),
    (
        "IssueToken",
        pb.IssueTokenRequest(subject="a", claims=_claims(exp=1)),
        "claims.exp",
    ),
    (
        "IssueToken",
        pb.IssueTokenRequest(subject="a", claims=_claims(level=float("inf"))),
        "claims.level",
    ),
    (
        "IssueToken",
        pb.IssueTokenRequest(subject="a", claims=_claims(level=float("-inf"))),
        "claims.level",
    ),
    (
        "IssueToken",
        pb.IssueTokenRequest(
            subject="a", claims=_claims(team={"ratio": [1, float("nan")]})
        ),
        "claims.team",
    ),
    ("VerifyToken", pb.VerifyTokenRequest(), "token"),
    ("VerifyToken", pb.VerifyTokenRequest(token="a.b.c", audience="evil"), "audience"),
    ("RefreshToken", pb.RefreshTokenRequest(), "refresh_token"),
    ("RefreshToken", pb.RefreshTokenRequest(refresh_token="x" * 600), "refresh_token"),
    ("RevokeToken", pb.RevokeTokenRequest(), "target"),
    ("RevokeToken", pb.RevokeTokenRequest(token_id=""), "token_id"),
    ("RevokeToken", pb.RevokeTokenRequest(access_token=""), "access_token"),
    ("RotateSigningKey", pb.RotateSigningKeyRequest(algorithm=99), "algorithm"),  # type: ignore[arg-type]
    ("ListSigningKeys", pb.ListSigningKeysRequest(page_size=-1), "page_size"),
    ("ListSigningKeys", pb.ListSigningKeysRequest(page_token="!!"), "page_token"),
    ("CreateApiKey", pb.CreateApiKeyRequest(), "subject"),
    (
        "CreateApiKey",
        pb.CreateApiKeyRequest(subject="s", display_name="d" * 200),
        "display_name",
    ),
    ("CreateApiKey", pb.CreateApiKeyRequest(subject="s", scopes=["no"]), "scopes[0]"),
    ("CreateApiKey", pb.CreateApiKeyRequest(subject="s", roles=["x"]), "roles[0]"),
    (
        "CreateApiKey",
        pb.CreateApiKeyRequest(subject="s", ttl=duration_pb2.Duration(seconds=1)),
        "ttl",
    ),
    ("ListApiKeys", pb.ListApiKeysRequest(page_size=-5), "page_size"),
    ("RevokeApiKey", pb.RevokeApiKeyRequest(), "api_key_id"),
    ("ExchangeApiKey", pb.ExchangeApiKeyRequest(), "api_key"),
    (
        "ExchangeApiKey",
        pb.ExchangeApiKeyRequest(api_key="esk_x", scopes=["BAD"]),
        "scopes[0]",
    ),
    (
        "ExchangeApiKey",
        pb.ExchangeApiKeyRequest(api_key="esk_x", audience="evil"),
        "audience",
    ),
]


@pytest.mark.parametrize(
    ("method", "request_message", "field"),
    CASES,
    ids=[f"{method}-{field}-{i}" for i, (method, _, field) in enumerate(CASES)],
)
async def test_bad_field_is_named(
    shared_auth: AuthUnderTest, method: str, request_message: Any, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await getattr(shared_auth.stub, method)(
            request_message, metadata=shared_auth.as_admin()
        )

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(raised.value).domain == "auth.empire-security"
    assert [v.field for v in bad_request(raised.value).field_violations] == [field]


async def test_bad_credentials_are_not_echoed(shared_auth: AuthUnderTest) -> None:
    secret = "esk_" + "S" * 600
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await shared_auth.stub.ExchangeApiKey(pb.ExchangeApiKeyRequest(api_key=secret))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "SSSS" not in (raised.value.details() or "")
    assert "SSSS" not in str(bad_request(raised.value))
