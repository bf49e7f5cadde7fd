"""Master-key rotation: add a keyring version, then rewrap data keys in the background.

Only the small wrapped data keys are rewritten, never the secrets' ciphertexts,
and each batch is its own transaction that skips rows changed meanwhile. The
work left is always "rows wrapped by an older version", read from the
database, so a restart (even after kill -9) simply carries on where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.vault.envelope import EnvelopeCipher
from services.vault.keyring import add_key_version, unwrap_keyring
from services.vault.store import VaultStore
from shared.db import UniqueViolation
from shared.errors import Unavailable

logger = logging.getLogger(__name__)

IDLE, RUNNING, COMPLETE = 1, 2, 3
_ADD_ATTEMPTS = 3
_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class Progress:
    state: int
    target_version: int
    rewrapped: int
    total: int


class MasterKeyRotator:
    def __init__(
        self,
        store: VaultStore,
        cipher: EnvelopeCipher,
        root_key: bytes,
        batch_size: int,
        pause_seconds: float,
    ) -> None:
        self._store = store
        self._cipher = cipher
        self._root_key = root_key
        self._batch_size = batch_size
        self._pause = pause_seconds
        self._task: asyncio.Task[None] | None = None
        self._state = IDLE
        self._last = Progress(IDLE, cipher.keyring.current_version, 0, 0)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def resume(self) -> None:
        """At start: finish a rewrap an earlier process left half done."""
        done, total = await self._store.rewrap_counts(self.target)
        if done < total:
            logger.info(
                "resuming the rewrap of %s data keys to master key version %s",
                total - done,
                self.target,
            )
            self._start()

    @property
    def target(self) -> int:
        return self._cipher.keyring.current_version

    async def rotate(self) -> int:
        """Adds a master key version, which wraps new data keys at once."""
        for attempt in range(_ADD_ATTEMPTS):
            version = self.target + 1
            try:
                key = await add_key_version(self._store, self._root_key, version)
            except UniqueViolation:
                # Another replica rotated first: learn its keys and try again.
                await self.reload_keyring()
                if attempt == _ADD_ATTEMPTS - 1:
                    raise
                continue
            self._cipher.keyring.add(version, key)
            logger.info("added master key version %s; rewrapping data keys", version)
            self._start()
            return version
        raise AssertionError("unreachable")

    async def reload_keyring(self) -> None:
        keyring = unwrap_keyring(self._root_key, await self._store.master_keys())
        for version in keyring.versions:
            self._cipher.keyring.add(version, keyring.key(version))

    @property
    def last_progress(self) -> Progress:
        return self._last

    async def progress(self) -> Progress:
        try:
            done, total = await self._store.rewrap_counts(self.target)
        except Unavailable:
            return self._last
        state = RUNNING if self.running or done < total else self._state
        self._last = Progress(state, self.target, done, total)
        return self._last

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _start(self) -> None:
        if self.running:
            return  # the running loop reads the new target on its next batch
        self._state = RUNNING
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                moved = await self._rewrap_batch()
            except Unavailable:
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            except Exception:
                logger.exception("the master-key rewrap stopped")
                self._state = IDLE
                return
            if moved == 0:
                self._state = COMPLETE
                logger.info(
                    "every data key is wrapped by master key version %s", self.target
                )
                return
            if self._pause:
                await asyncio.sleep(self._pause)

    async def _rewrap_batch(self) -> int:
        target = self.target
        batch = await self._store.versions_to_rewrap(target, self._batch_size)
        if not batch:
            return 0
        async with self._store.db.transaction() as tx:
            for record in batch:
                assert record.sealed is not None
                sealed = self._cipher.rewrap(
                    record.key_id, record.version, record.sealed, target
                )
                await self._store.store_rewrapped(tx, record, sealed)
        return len(batch)
