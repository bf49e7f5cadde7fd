"""Issuing and verifying access tokens through the real service, on both stores."""

from __future__ import annotations

import base64
import json

import grpc
import jwt
import pytest
from google.protobuf import duration_pb2, struct_pb2

from empire.auth.v1 import auth_service_pb2 as pb
from shared.clients import bearer
from tests.auth.harness import AuthUnderTest, auth_settings, running_auth
from tests.harness.grpc_errors import bad_request, error_info

# These tests do not disturb each other: one service per dialect serves them all.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture
def auth(shared_auth: AuthUnderTest) -> AuthUnderTest:
    return shared_auth


def _claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def _header_of(token: str) -> dict:
    part = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


async def test_issued_token_verifies_with_its_claims(auth: AuthUnderTest) -> None:
    claims = struct_pb2.Struct()
    claims.update({"tenant": "acme", "plan": {"tier": 2}})
    issued = await auth.issue(scopes=["secrets:read"], roles=["reader"], claims=claims)

    verdict = await auth.verify(issued.access_token)

    assert verdict.valid
    assert verdict.reason == pb.VerifyTokenResponse.REASON_UNSPECIFIED
    assert verdict.subject == "alice"
    assert sorted(verdict.scopes) == ["secrets:read", "tokens:verify"]
    assert list(verdict.roles) == ["reader"]
    assert verdict.token_id == issued.token_id
    assert verdict.key_id == issued.key_id
    assert verdict.claims["tenant"] == "acme"
    assert verdict.claims["plan"]["tier"] == 2


async def test_token_carries_every_registered_claim(auth: AuthUnderTest) -> None:
    issued = await auth.issue(scopes=["secrets:read"])
    claims, header = _claims_of(issued.access_token), _header_of(issued.access_token)

    assert header["alg"] == "EdDSA"
    assert header["kid"] == issued.key_id
    assert header["typ"] == "at+jwt"
    assert claims["iss"] == auth.settings.issuer
    assert claims["aud"] == auth.settings.audience
    assert claims["sub"] == "alice"
    assert claims["jti"] == issued.token_id
    assert claims["scope"] == "secrets:read"
    assert claims["nbf"] == claims["iat"]
    assert claims["exp"] - claims["iat"] == auth.settings.default_token_ttl_seconds


@pytest.mark.parametrize("name", ["iss", "sub", "aud", "exp", "jti", "scope", "roles"])
async def test_extra_claims_cannot_override_registered_ones(
    auth: AuthUnderTest, name: str
) -> None:
    claims = struct_pb2.Struct()
    claims.update({name: "forged"})

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.issue(claims=claims)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(raised.value).field_violations[0].field == f"claims.{name}"


async def test_ttl_is_bounded_by_configuration(auth: AuthUnderTest) -> None:
    too_long = duration_pb2.Duration(seconds=auth.settings.max_token_ttl_seconds + 1)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.issue(ttl=too_long)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(raised.value).field_violations[0].field == "ttl"

    issued = await auth.issue(ttl=duration_pb2.Duration(seconds=120))
    claims = _claims_of(issued.access_token)
    assert claims["exp"] - claims["iat"] == 120


async def test_caller_cannot_issue_more_scope_than_it_holds(
    auth: AuthUnderTest,
) -> None:
    narrow = await auth.issue(subject="issuer", scopes=["tokens:issue", "secrets:read"])
    as_narrow = (bearer(narrow.access_token),)

    allowed = await auth.stub.IssueToken(
        pb.IssueTokenRequest(subject="bob", scopes=["secrets:read:llm/"]),
        metadata=as_narrow,
    )
    assert list(allowed.scopes) == ["secrets:read:llm/"]

    for request in (
        pb.IssueTokenRequest(subject="bob", scopes=["secrets:write"]),
        pb.IssueTokenRequest(subject="bob", scopes=["*"]),
        pb.IssueTokenRequest(subject="bob", roles=["admin"]),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await auth.stub.IssueToken(request, metadata=as_narrow)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(raised.value).reason == "SCOPE_EXCEEDS_CALLER"


async def test_admin_role_grants_every_scope(auth: AuthUnderTest) -> None:
    issued = await auth.issue(subject="root", roles=["admin"])
    assert list(issued.scopes) == ["*"]

    # The admin token can call a keys:admin method.
    listing = await auth.stub.ListSigningKeys(
        pb.ListSigningKeysRequest(), metadata=(bearer(issued.access_token),)
    )
    assert listing.signing_keys


async def test_issue_token_needs_the_tokens_issue_scope(auth: AuthUnderTest) -> None:
    reader = await auth.issue(scopes=["secrets:read"])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.stub.IssueToken(
            pb.IssueTokenRequest(subject="x"), metadata=(bearer(reader.access_token),)
        )
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(raised.value).reason == "MISSING_SCOPE"


async def test_calls_without_a_token_are_unauthenticated(auth: AuthUnderTest) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await auth.stub.IssueToken(pb.IssueTokenRequest(subject="x"))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(raised.value).reason == "MISSING_TOKEN"


async def test_wrong_audience_is_reported(auth: AuthUnderTest) -> None:
    issued = await auth.issue(audience="other-audience")

    assert not (await auth.verify(issued.access_token)).valid
    verdict = await auth.verify(issued.access_token)
    assert verdict.reason == pb.VerifyTokenResponse.WRONG_AUDIENCE
    assert (await auth.verify(issued.access_token, audience="other-audience")).valid


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
async def test_other_algorithms_sign_and_verify(
    sqlite_url: str, algorithm: str
) -> None:
    settings = auth_settings(sqlite_url, AUTH_KEY_ALGORITHM=algorithm)
    async with running_auth(settings) as auth:
        issued = await auth.issue(scopes=["secrets:read"])

        assert _header_of(issued.access_token)["alg"] == algorithm
        assert (await auth.verify(issued.access_token)).valid
