"""Revoking access tokens by the token itself or by its id (`jti`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from services.auth.denylist import Denylist
from services.auth.store import AuthStore
from services.auth.verification import TokenChecker
from shared.errors import InvalidArgument, NotFound

logger = logging.getLogger(__name__)


class TokenRevoker:
    def __init__(
        self,
        store: AuthStore,
        checker: TokenChecker,
        denylist: Denylist,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._checker = checker
        self._denylist = denylist
        self._clock = clock

    async def revoke_token(self, token: str) -> str:
        """Revoke a token this service signed (expired or not); its id."""
        verdict = await self._checker.inspect(token)
        if not verdict.valid:
            raise InvalidArgument(
                "access_token",
                "not a token this service issued",
                reason="TOKEN_NOT_VERIFIABLE",
            )
        expires_ms = int(verdict.claims["exp"]) * 1000
        await self._deny(verdict.token_id, expires_ms)
        return verdict.token_id

    async def revoke_token_id(self, token_id: str) -> str:
        expires_ms = await self._store.issued_expiry(token_id)
        if expires_ms is None:
            # Unknown, or expired and already pruned: nothing left to deny.
            raise NotFound("no unexpired token has this id", reason="TOKEN_NOT_FOUND")
        await self._deny(token_id, expires_ms)
        return token_id

    async def _deny(self, token_id: str, expires_ms: int) -> None:
        now_ms = int(self._clock() * 1000)
        await self._store.revoke_tokens([(token_id, expires_ms)], now_ms)
        self._denylist.add([(token_id, expires_ms)])
        logger.info("revoked token %s", token_id)
