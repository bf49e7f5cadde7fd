"""No token, refresh token or API key ever reaches a log line."""

from __future__ import annotations

import logging

import grpc
import pytest

from empire.auth.v1 import auth_service_pb2 as pb
from shared.clients import bearer
from shared.logs import JsonFormatter
from tests.auth.harness import auth_settings, running_auth


async def test_no_credential_appears_in_any_log_line(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = auth_settings(database_url, AUTH_REFRESH_REUSE_GRACE_SECONDS="0")
    secrets_seen: list[str] = [settings.bootstrap_api_key or ""]

    async with running_auth(settings) as auth:
        secrets_seen.append(auth.admin_token)
        issued = await auth.issue(include_refresh_token=True)
        secrets_seen += [issued.access_token, issued.refresh_token]
        await auth.verify(issued.access_token)
        await auth.verify(issued.access_token[:-4] + "AAAA")

        refreshed = await auth.stub.RefreshToken(
            pb.RefreshTokenRequest(refresh_token=issued.refresh_token)
        )
        secrets_seen += [refreshed.access_token, refreshed.refresh_token]
        with pytest.raises(grpc.aio.AioRpcError):  # reuse: the family is revoked
            await auth.stub.RefreshToken(
                pb.RefreshTokenRequest(refresh_token=issued.refresh_token)
            )

        created = await auth.stub.CreateApiKey(
            pb.CreateApiKeyRequest(subject="svc", scopes=["cache:use"]),
            metadata=auth.as_admin(),
        )
        secrets_seen.append(created.secret)
        exchanged = await auth.stub.ExchangeApiKey(
            pb.ExchangeApiKeyRequest(api_key=created.secret)
        )
        secrets_seen.append(exchanged.access_token)
        bad_key = created.secret[:-1] + ("x" if created.secret[-1] != "x" else "y")
        secrets_seen.append(bad_key)
        with pytest.raises(grpc.aio.AioRpcError):
            await auth.stub.ExchangeApiKey(pb.ExchangeApiKeyRequest(api_key=bad_key))

        await auth.stub.RevokeToken(
            pb.RevokeTokenRequest(access_token=exchanged.access_token),
            metadata=auth.as_admin(),
        )
        with pytest.raises(grpc.aio.AioRpcError):  # a revoked bearer token
            await auth.stub.ListApiKeys(
                pb.ListApiKeysRequest(), metadata=(bearer(exchanged.access_token),)
            )
        await auth.components.maintenance.run_once()

    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert any("auth.v1.AuthService/IssueToken" in line for line in lines)  # logs seen
    for secret in secrets_seen:
        # Any distinctive piece: a signature, a refresh or API key body.
        fragments = [secret, secret[-24:]]
        for line in lines:
            assert not any(fragment in line for fragment in fragments), line
