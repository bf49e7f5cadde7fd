"""The in-memory denylist of revoked access tokens, kept in step with the store.

Verification reads only memory, so it keeps working while the database is
down; revocations made by other replicas arrive at the next sync.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from services.auth.store import AuthQueries

# Revocations are fetched from a little before the last one seen, so a replica
# whose clock runs behind ours cannot slip one past the watermark.
_SYNC_OVERLAP_MS = 60_000


class Denylist:
    def __init__(
        self, clock: Callable[[], float] = time.time, leeway_seconds: float = 0.0
    ) -> None:
        self._clock = clock
        # Verifiers accept a token for their clock leeway past `exp`, so its
        # revocation must be kept (and synced) that long past it too.
        self._leeway_ms = int(leeway_seconds * 1000)
        self._revoked: dict[str, int] = {}
        self._watermark_ms = 0
        self.version = 0  # moves whenever the set of revoked ids changes

    def __len__(self) -> int:
        return len(self._revoked)

    def is_revoked(self, token_id: str) -> bool:
        return token_id in self._revoked

    def snapshot(self) -> dict[str, int]:
        """Each revoked token id with its expiry in Unix milliseconds."""
        return dict(self._revoked)

    def still_accepted_after_ms(self, now_ms: int) -> int:
        """Tokens that expired after this instant still pass verifiers (the
        leeway): revoking a key or family must deny them too."""
        return now_ms - self._leeway_ms

    def add(self, tokens: Iterable[tuple[str, int]]) -> None:
        for token_id, expires_ms in tokens:
            self._set(token_id, expires_ms)

    async def sync(self, queries: AuthQueries) -> None:
        since = max(0, self._watermark_ms - _SYNC_OVERLAP_MS)
        rows = await queries.revocations_since(since)
        now_ms = int(self._clock() * 1000)
        for token_id, expires_ms, revoked_ms in rows:
            if expires_ms + self._leeway_ms > now_ms:
                self._set(token_id, expires_ms)
            self._watermark_ms = max(self._watermark_ms, revoked_ms)

    def prune(self, before_ms: int) -> None:
        """Forget revocations of tokens that expired before `before_ms`."""
        expired = [tid for tid, exp in self._revoked.items() if exp < before_ms]
        for token_id in expired:
            del self._revoked[token_id]
        if expired:
            self.version += 1

    def _set(self, token_id: str, expires_ms: int) -> None:
        if self._revoked.get(token_id) != expires_ms:
            self._revoked[token_id] = expires_ms
            self.version += 1
