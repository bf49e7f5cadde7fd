"""The background loop: sync with other replicas, retire and rotate keys, prune."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from services.auth.denylist import Denylist
from services.auth.keyring import SigningKeyRing
from services.auth.master_key_rotation import report_hashes_under_accepted_keys
from services.auth.secrets_box import MasterKey
from services.auth.store import AuthStore
from shared.errors import EmpireError

logger = logging.getLogger(__name__)

PRUNE_EVERY_SECONDS = 60.0


class Maintenance:
    def __init__(
        self,
        store: AuthStore,
        keyring: SigningKeyRing,
        denylist: Denylist,
        master_key: MasterKey,
        *,
        interval_seconds: float,
        leeway_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._keyring = keyring
        self._denylist = denylist
        self._master_key = master_key
        self._interval = interval_seconds
        self._leeway_ms = int(leeway_seconds * 1000)
        self._clock = clock
        self._last_prune = float("-inf")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="auth-maintenance")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run_once(self) -> None:
        """One pass; a failure of one step does not skip the others."""
        for step in (self._sync_keys, self._sync_denylist, self._prune):
            try:
                await step()
            except EmpireError as error:
                # The database is down or another replica won a race: the
                # keys in memory keep verifying; try again next pass.
                logger.warning("maintenance step %s: %s", step.__name__, error.reason)
            except Exception:
                logger.exception("maintenance step %s failed", step.__name__)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.run_once()

    async def _sync_keys(self) -> None:
        await self._keyring.reload()
        await self._keyring.maintain()

    async def _sync_denylist(self) -> None:
        await self._denylist.sync(self._store)

    async def _prune(self) -> None:
        if time.monotonic() - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = time.monotonic()
        before_ms = int(self._clock() * 1000) - self._leeway_ms
        removed = await self._store.prune_expired(before_ms)
        self._denylist.prune(before_ms)
        if removed:
            logger.info("pruned %s expired token records", removed)
        if self._master_key.has_accepted_keys:
            now_ms = int(self._clock() * 1000)
            await report_hashes_under_accepted_keys(
                self._store, self._master_key, now_ms
            )
