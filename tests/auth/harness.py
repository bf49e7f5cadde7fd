"""Start a real auth service for a test, and call it as its admin or anyone."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from empire.auth.v1 import auth_service_pb2 as pb
from empire.auth.v1 import auth_service_pb2_grpc as pb_grpc
from services.auth.api_key_format import generate_api_key
from services.auth.app import create_service
from services.auth.servicer import AuthComponents, AuthServicer
from services.auth.settings import AuthSettings, load_settings
from shared.clients import bearer
from shared.config import Env
from shared.server import RunningServer
from tests.harness.servers import serve, test_server_settings


def auth_settings(database_url: str, **env: str) -> AuthSettings:
    """Settings on free ports with a fresh master key and bootstrap admin key."""
    environ = {
        "EMPIRE_AUTH_DATABASE_URL": database_url,
        "EMPIRE_AUTH_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "EMPIRE_AUTH_BOOTSTRAP_API_KEY": generate_api_key().secret,
        "EMPIRE_AUTH_DEVELOPMENT": "false",
        "EMPIRE_AUTH_KEY_ROTATION_INTERVAL_SECONDS": "0",
        "EMPIRE_AUTH_JWKS_MAX_AGE_SECONDS": "60",
        "EMPIRE_AUTH_SYNC_INTERVAL_SECONDS": "30",
        "EMPIRE_AUTH_ROLES": "reader=secrets:read tokens:verify",
        "EMPIRE_AUTH_AUDIENCES": "other-audience",
        **{f"EMPIRE_{name}": value for name, value in env.items()},
    }
    settings = load_settings(Env(environ))
    return dataclasses.replace(settings, server=test_server_settings("auth"))


@dataclasses.dataclass
class AuthUnderTest:
    server: RunningServer
    stub: pb_grpc.AuthServiceStub
    settings: AuthSettings
    admin_token: str

    @property
    def components(self) -> AuthComponents:
        servicer = self.server.service.servicers[0][1]
        assert isinstance(servicer, AuthServicer)
        return servicer.components

    async def renew_admin_token(self) -> None:
        """A fresh admin token (the old one dies with a retired key)."""
        assert self.settings.bootstrap_api_key is not None
        exchanged = await self.stub.ExchangeApiKey(
            pb.ExchangeApiKeyRequest(api_key=self.settings.bootstrap_api_key)
        )
        self.admin_token = exchanged.access_token

    def as_admin(self) -> tuple[tuple[str, str]]:
        return (bearer(self.admin_token),)

    async def issue(
        self, subject: str = "alice", **fields: Any
    ) -> pb.IssueTokenResponse:
        request = pb.IssueTokenRequest(subject=subject, **fields)
        return await self.stub.IssueToken(request, metadata=self.as_admin())

    async def verify(self, token: str, audience: str = "") -> pb.VerifyTokenResponse:
        request = pb.VerifyTokenRequest(token=token, audience=audience)
        return await self.stub.VerifyToken(request, metadata=self.as_admin())


@contextlib.asynccontextmanager
async def running_auth(
    settings: AuthSettings, keyring_clock: Callable[[], float] = time.time
) -> AsyncIterator[AuthUnderTest]:
    service = await create_service(settings, keyring_clock=keyring_clock)
    async with serve(service, settings.server) as server:
        channel = server.channel()
        stub = pb_grpc.AuthServiceStub(channel)
        assert settings.bootstrap_api_key is not None
        exchanged = await stub.ExchangeApiKey(
            pb.ExchangeApiKeyRequest(api_key=settings.bootstrap_api_key)
        )
        try:
            yield AuthUnderTest(server, stub, settings, exchanged.access_token)
        finally:
            await channel.close()


class FakeClock:
    """A clock tests move by hand, for key lifecycles measured in hours."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
