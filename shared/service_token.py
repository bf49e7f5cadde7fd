"""Access tokens for service-to-service calls, from an API key exchanged with auth.

    tokens = ApiKeyTokenSource("127.0.0.1:50051", api_key)
    vault = ServiceClient(VaultServiceStub(channel), token=tokens.token)

The token is exchanged once, reused, and exchanged again before it expires
(after most of its lifetime), by one caller at a time. If auth is down when a
refresh falls due, the old token is used for as long as it is still valid.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import grpc

from empire.auth.v1 import auth_service_pb2 as auth_pb
from empire.auth.v1 import auth_service_pb2_grpc as auth_grpc
from shared.clients import open_channel
from shared.errors import Unavailable

logger = logging.getLogger(__name__)

# Exchange again once this share of the token's lifetime has passed.
REFRESH_AFTER_FRACTION = 0.8
# Never hand out a token closer than this to its expiry.
EXPIRY_SAFETY_SECONDS = 5.0
_REJECTED = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
}


class ApiKeyTokenSource:
    """Hands out a valid access token for `api_key`, refreshing it before expiry."""

    def __init__(
        self,
        auth_target_or_channel: str | grpc.aio.Channel,
        api_key: str,
        *,
        scopes: Sequence[str] = (),
        audience: str = "",
        timeout_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(auth_target_or_channel, str):
            self._channel = open_channel(auth_target_or_channel)
            self._owns_channel = True
        else:
            self._channel = auth_target_or_channel
            self._owns_channel = False
        self._stub = auth_grpc.AuthServiceStub(self._channel)
        self._request = auth_pb.ExchangeApiKeyRequest(
            api_key=api_key, scopes=list(scopes), audience=audience
        )
        self._timeout = timeout_seconds
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = float("-inf")
        self._unusable_at = float("-inf")
        self.exchanges = 0

    async def token(self) -> str:
        """A bearer token valid now; exchanges the API key when due."""
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        async with self._lock:
            if self._token is not None and self._clock() < self._refresh_at:
                return self._token  # another caller refreshed while we waited
            try:
                await self._exchange()
            except Unavailable:
                if self._token is not None and self._clock() < self._unusable_at:
                    logger.warning("auth unreachable; using the current token")
                    return self._token
                raise
            assert self._token is not None
            return self._token

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def _exchange(self) -> None:
        started = self._clock()
        try:
            response = await self._stub.ExchangeApiKey(
                self._request, timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in _REJECTED:
                # NOTE: the key is misconfigured; callers of this service see
                # a dependency failure, not their own credential refused.
                logger.error("auth refused the service API key: %s", error.code().name)
                raise Unavailable(
                    "this service's credential was refused by auth",
                    reason="SERVICE_CREDENTIAL_REJECTED",
                ) from None
            raise Unavailable(
                "auth is unreachable", reason="AUTH_UNAVAILABLE"
            ) from None
        self.exchanges += 1
        lifetime = response.expire_time.ToMilliseconds() / 1000 - time.time()
        lifetime = max(lifetime, 0.0)
        self._token = response.access_token
        self._refresh_at = started + lifetime * REFRESH_AFTER_FRACTION
        self._unusable_at = started + max(lifetime - EXPIRY_SAFETY_SECONDS, 0.0)
