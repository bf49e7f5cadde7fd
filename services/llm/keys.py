"""Where provider API keys come from: the environment, or the vault service.

A key named `llm/openai` is read from `EMPIRE_LLM_PROVIDER_KEY_LLM_OPENAI` when
that variable is set (local development), else from the vault with the
service's own token, and kept in memory for a while. A key the provider
rejects is dropped from memory, so a rotated key is picked up on the next try.
While the vault cannot be asked, the key read before stays in use: a vault
outage alone takes no provider out of service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from services.llm.dependencies import dependency_budget
from services.llm.models import ErrorClass, ProviderFailure
from shared.errors import Unavailable

logger = logging.getLogger(__name__)

ENV_PREFIX = "EMPIRE_LLM_PROVIDER_KEY_"
# Vault answers that say it could not be asked, not that the key is gone.
_OUTAGE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


class VaultUnreachable(ProviderFailure):
    """The vault could not be asked for a key (down, slow, or no token for it)."""


def env_name(key_id: str) -> str:
    """The variable that may hold `key_id`: `llm/openai` -> `..._LLM_OPENAI`."""
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", key_id).upper()


class ApiKeySource:
    """Reads and caches API keys; `vault` is a `ServiceClient` over VaultService."""

    def __init__(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        vault: Any = None,
        cache_seconds: float = 300.0,
        timeout_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._environ = os.environ if environ is None else environ
        self._vault = vault
        self._cache_seconds = cache_seconds
        self._timeout = timeout_seconds
        self._clock = clock
        self._cached: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, key_id: str, deadline: float | None = None) -> str | None:
        """The key, or None for a provider that takes none. The vault is asked
        within a share of the time left until `deadline` (event-loop time):
        a slow vault is an unreachable one, not a silent provider."""
        if not key_id:
            return None
        from_env = self._environ.get(env_name(key_id))
        if from_env:
            return from_env
        cached = self._cached.get(key_id)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        lock = self._locks.setdefault(key_id, asyncio.Lock())
        try:
            # Covers the wait for another read of the key and for the token.
            async with asyncio.timeout(dependency_budget(self._timeout, deadline)):
                async with lock:
                    return await self._refresh(key_id)
        except TimeoutError:
            logger.warning("API key %s not read: the vault is too slow", key_id)
            return self._keep(key_id, "the vault did not answer in time")

    def invalidate(self, key_id: str) -> None:
        self._cached.pop(key_id, None)

    async def _refresh(self, key_id: str) -> str:
        cached = self._cached.get(key_id)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        try:
            value = await self._read_vault(key_id)
        except VaultUnreachable as failure:
            return self._keep(key_id, failure.message)
        except ProviderFailure:
            self._cached.pop(key_id, None)  # gone or refused: never reuse it
            raise
        self._cached[key_id] = (value, self._clock() + self._cache_seconds)
        return value

    def _keep(self, key_id: str, why: str) -> str:
        """The key read before, kept for another period while the vault cannot
        be asked; VaultUnreachable when none was read."""
        cached = self._cached.get(key_id)
        if cached is None:
            raise VaultUnreachable(ErrorClass.CREDENTIALS_UNAVAILABLE, why)
        logger.warning("vault unreachable; API key %s read before kept", key_id)
        self._cached[key_id] = (cached[0], self._clock() + self._cache_seconds)
        return cached[0]

    async def _read_vault(self, key_id: str) -> str:
        if self._vault is None:
            raise ProviderFailure(
                ErrorClass.CREDENTIALS_UNAVAILABLE,
                f"no vault is configured and {env_name(key_id)} is not set",
            )
        from empire.vault.v1 import vault_service_pb2

        try:
            response = await self._vault.GetSecret(
                vault_service_pb2.GetSecretRequest(key_id=key_id)
            )
        except grpc.aio.AioRpcError as error:
            logger.warning(
                "API key %s not read from the vault: %s", key_id, error.code().name
            )
            failure = (
                VaultUnreachable if error.code() in _OUTAGE_CODES else ProviderFailure
            )
            raise failure(
                ErrorClass.CREDENTIALS_UNAVAILABLE,
                f"the vault did not give the API key ({error.code().name})",
            ) from None
        except Unavailable as error:
            # No token to call the vault with (auth unreachable): the vault
            # could not be asked, which is no reason to end the request.
            logger.warning(
                "API key %s not read: no token for the vault (%s)", key_id, error.reason
            )
            raise VaultUnreachable(
                ErrorClass.CREDENTIALS_UNAVAILABLE,
                f"the vault could not be asked for the API key ({error.reason})",
            ) from None
        return bytes(response.value).decode("utf-8").strip()
