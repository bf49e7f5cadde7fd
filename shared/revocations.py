"""The revoked access tokens auth publishes, kept in step for local verification.

Services verify tokens locally against the JWKS, which alone would accept a
revoked token until it expires. Auth therefore publishes the ids (`jti`) of its
revoked, unexpired tokens beside the JWKS, and every service polls that list in
the background and refuses the tokens on it. A revocation reaches every service
within auth's replica sync interval plus the poll interval.

When auth cannot be reached the last list is kept and the poll goes on: tokens
already known revoked stay refused, later revocations wait for auth to return
(the tokens themselves are short-lived). No token ever travels in this list,
only ids.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

REVOCATIONS_PATH = "/.well-known/revoked-tokens.json"
_MAX_DOCUMENT_BYTES = 16 << 20

# Returns the published document, or None when it is unchanged since the last
# fetch.
RevocationFetcher = Callable[[], Awaitable[Mapping[str, Any] | None]]


def revocations_document(revoked: Mapping[str, int]) -> dict[str, Any]:
    """What auth publishes: each revoked token id with its expiry (Unix seconds)."""
    return {
        "revoked": [
            {"jti": token_id, "exp": expires_ms // 1000 + 1}
            for token_id, expires_ms in sorted(revoked.items())
        ]
    }


class HttpRevocationSource:
    """Fetches auth's list over plain HTTP, revalidating with its ETag."""

    def __init__(self, url: str, timeout_seconds: float = 3.0) -> None:
        self._url = url
        self._timeout = timeout_seconds
        self._etag: str | None = None

    async def __call__(self) -> Mapping[str, Any] | None:
        return await asyncio.to_thread(self._fetch)

    def _fetch(self) -> Mapping[str, Any] | None:
        request = urllib.request.Request(self._url)
        if self._etag is not None:
            request.add_header("If-None-Match", self._etag)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                document: Mapping[str, Any] = json.loads(
                    response.read(_MAX_DOCUMENT_BYTES)
                )
                self._etag = response.headers.get("ETag")
        except urllib.error.HTTPError as error:
            if error.code == 304:
                return None
            raise
        return document


class RevocationList:
    """Token ids to refuse, refreshed from auth every `poll_seconds`."""

    def __init__(
        self,
        fetch: RevocationFetcher,
        *,
        poll_seconds: float,
        leeway_seconds: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch
        self._poll = poll_seconds
        # A verifier accepts a token for its clock leeway past `exp`, so an id
        # is kept that long past it too.
        self._leeway = leeway_seconds
        self._clock = clock
        self._revoked: dict[str, float] = {}  # token id -> expiry, Unix seconds
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.fetch_count = 0

    def __len__(self) -> int:
        return len(self._revoked)

    def is_revoked(self, token_id: str) -> bool:
        return token_id in self._revoked

    async def refresh(self) -> None:
        """Fetch the list now; raises when auth cannot be reached.

        What is fetched is added to what is known, never put in its place:
        a revocation is never undone, and the replica of auth that answers
        this poll may not yet have synced one that another replica made.
        Ids leave only once their tokens have expired.
        """
        self.fetch_count += 1
        document = await self._fetch()
        now = self._clock() - self._leeway
        known = {t: e for t, e in self._revoked.items() if e > now}
        if document is not None:  # None: unchanged since the last fetch
            known.update(_parse(document, now))
        self._revoked = known

    async def start(self, first_fetch_timeout: float = 3.0) -> None:
        """Fetch once (bounded), then poll in the background until `close`.

        The first fetch comes before the caller serves anything, so a replica
        that starts while tokens are revoked refuses them from its first call.
        """
        if self._task is not None:
            return
        try:
            await asyncio.wait_for(self._poll_once(), first_fetch_timeout)
        except TimeoutError:
            self._report_failure(TimeoutError())
        self._task = asyncio.create_task(self._run(), name="revocation-poll")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            await self._poll_once()

    async def _poll_once(self) -> None:
        try:
            await self.refresh()
        except Exception as error:  # noqa: BLE001 - any failure degrades alike
            self._report_failure(error)
        else:
            if self._failing:
                logger.info("fetching the revoked tokens works again")
            self._failing = False

    def _report_failure(self, error: BaseException) -> None:
        if not self._failing:
            logger.warning(
                "cannot fetch the revoked tokens, keeping the %s known: %s",
                len(self._revoked),
                type(error).__name__,
            )
        self._failing = True


def _parse(document: Mapping[str, Any], now: float) -> dict[str, float]:
    entries = document.get("revoked")
    if not isinstance(entries, list):
        raise ValueError("the revocation list has no 'revoked' array")
    revoked: dict[str, float] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        token_id, expires = entry.get("jti"), entry.get("exp")
        if isinstance(token_id, str) and isinstance(expires, int | float):
            if expires > now:
                revoked[token_id] = float(expires)
    return revoked
