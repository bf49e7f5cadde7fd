"""Master-key rotation: add a keyring version, then rewrap data keys in the background.

Only the small wrapped data keys are rewritten, never the secrets' ciphertexts.
Each batch is one transaction that locks the audit chain's head first, as every
write does: so it cannot deadlock with a write, and no write or restore changes
its rows between the moment it reads them and the moment it rewrites them. The
work left is always "rows wrapped by an older version", read from the
database, so a restart (even after kill -9) simply carries on where it stopped.
A row whose data key does not unwrap is skipped and counted, not retried
forever; the rewrap then ends FAILED, naming how many rows it left behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from services.vault.audit import AuditEntry, AuditLog
from services.vault.envelope import EnvelopeCipher, SealedValue
from services.vault.errors import DataLoss
from services.vault.keyring import add_key_version, unwrap_keyring
from services.vault.records import VersionRecord
from services.vault.store import VaultStore
from shared.db import Executor
from shared.errors import Aborted, Unavailable

logger = logging.getLogger(__name__)

IDLE, RUNNING, COMPLETE, FAILED = 1, 2, 3, 4
_RETRY_SECONDS = 1.0
_CONFLICT_RETRY_SECONDS = 0.1
_START = ("", 0)


@dataclass(frozen=True)
class Progress:
    state: int
    target_version: int
    rewrapped: int
    total: int
    failed: int = 0


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
        # (key id, version) of the rows this run could not unwrap.
        self._failed: set[tuple[str, int]] = set()
        self._last = Progress(IDLE, cipher.keyring.current_version, 0, 0)
        # Blocks that hold the rewrap off, and whether it starts after them.
        self._pauses = 0
        self._start_after_pause = False
        self._rotating = asyncio.Lock()
        # The progress read a caller stopped waiting for, still under way.
        self._progress_read: asyncio.Task[Progress] | None = None

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

    async def rotate(self, audit: AuditLog, actor: str) -> int:
        """Adds a master key version, which wraps new data keys at once.

        The key and its audit event commit in one transaction (fail-closed): a
        rotation whose event cannot be recorded does not happen.
        """

        async def add(tx: Executor) -> tuple[list[AuditEntry], tuple[int, bytes]]:
            # The batch holds the chain head and has just learned the versions
            # other replicas added, so this number is free; should it clash
            # anyway, the batch is rerun, and ends ABORTED if it keeps clashing.
            version = self.target + 1
            key = await add_key_version(self._store, self._root_key, version, tx)
            return [AuditEntry(actor, "RotateMasterKey", "", version)], (version, key)

        # One rotation at a time: two in one batch would take the same number.
        async with self._rotating:
            version, key = await audit.write(add)
        # Only once committed: a key in the ring seals new data keys at once.
        self._cipher.keyring.add(version, key)
        logger.info("added master key version %s; rewrapping data keys", version)
        self._start()
        return version

    async def reload_keyring(self, tx: Executor | None = None) -> None:
        """Learns the keyring versions another replica added (one query when
        there are none)."""
        keyring = self._cipher.keyring
        rows = await self._store.master_keys(after=keyring.current_version, tx=tx)
        if not rows:
            return
        added = unwrap_keyring(self._root_key, rows)
        for version in added.versions:
            keyring.add(version, added.key(version))
        logger.info("learned master key version %s", keyring.current_version)

    @property
    def last_progress(self) -> Progress:
        return self._last

    async def progress(self) -> Progress:
        try:
            await self.reload_keyring()
            done, total = await self._store.rewrap_counts(self.target)
        except Unavailable:
            return self._last
        if self.running:
            state = RUNNING
        elif done < total:
            # Rows this process gave up on, or a rewrap another replica runs.
            state = FAILED if self._state == FAILED else RUNNING
        else:
            state = COMPLETE if self._state == FAILED else self._state
        self._last = Progress(state, self.target, done, total, len(self._failed))
        return self._last

    async def progress_within(self, seconds: float) -> Progress | None:
        """`progress()`, or None when the database has not answered within
        `seconds` (a stalled network answers only at the statement timeout).
        The read then goes on, one at a time, and updates `last_progress`."""
        read = self._progress_read
        if read is None or read.done():
            read = self._progress_read = asyncio.create_task(self.progress())
            read.add_done_callback(_retrieve_exception)
        done, _ = await asyncio.wait({read}, timeout=seconds)
        return read.result() if done else None

    async def close(self) -> None:
        if self._progress_read is not None:
            self._progress_read.cancel()
            await asyncio.gather(self._progress_read, return_exceptions=True)
        await self._stop()

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Holds the rewrap off for the block, as a restore must: a batch
        under way would wrap restored data keys under a master key the
        restored keyring may lack. A rewrap stopped (or asked for) meanwhile
        starts once the block ends, from what the database then holds."""
        self._pauses += 1
        self._start_after_pause = self._start_after_pause or self.running
        await self._stop()
        try:
            yield
        finally:
            self._pauses -= 1
            if not self._pauses and self._start_after_pause:
                self._start_after_pause = False
                self._start()

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _start(self) -> None:
        if self._pauses:
            self._start_after_pause = True
            return
        if self.running:
            return  # the running loop reads the new target on its next batch
        self._state = RUNNING
        self._failed = set()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        position: tuple[str, int] | None = _START
        while position is not None:
            try:
                position = await self._rewrap_batch(position)
            except Unavailable:
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            except Aborted:
                # A deadlock with a writer outside the vault, or a wait for
                # a chain head held too long: go again.
                logger.info("a rewrap batch lost a conflict with a writer; retrying")
                await asyncio.sleep(_CONFLICT_RETRY_SECONDS)
                continue
            except Exception:
                logger.exception("the master-key rewrap stopped")
                self._state = FAILED
                return
            if self._pause:
                await asyncio.sleep(self._pause)
        self._finish()

    async def _rewrap_batch(self, after: tuple[str, int]) -> tuple[str, int] | None:
        """Rewraps the rows after `after`; the position to go on from, or None
        when nothing is left but rows that cannot be unwrapped."""
        async with self._store.db.transaction() as tx:
            await self._store.lock_audit_head(tx)
            target = self.target
            batch = await self._store.versions_to_rewrap(
                target, self._batch_size, after, tx=tx
            )
            if not batch:
                return None if await self._nothing_left(tx) else _START
            for record in batch:
                sealed = self._rewrapped(record, target)
                if sealed is not None:
                    await self._store.store_rewrapped(tx, record, sealed)
        return batch[-1].key_id, batch[-1].version

    def _rewrapped(self, record: VersionRecord, target: int) -> SealedValue | None:
        assert record.sealed is not None
        try:
            return self._cipher.rewrap(
                record.key_id, record.version, record.sealed, target
            )
        except DataLoss as error:
            if (record.key_id, record.version) not in self._failed:
                self._failed.add((record.key_id, record.version))
                logger.warning(
                    "cannot rewrap version %s of %s (%s); it stays on master key"
                    " version %s",
                    record.version,
                    record.key_id,
                    error.reason,
                    record.sealed.master_version,
                )
            return None

    async def _nothing_left(self, tx: Executor) -> bool:
        """Whether every row older than the target is one this run gave up on.

        Asked under the chain lock, which every write takes before it learns
        the current master key version: a write that sealed with an older
        version has committed by now, and any later one seals with the target.
        """
        left = await self._store.versions_to_rewrap(
            self.target, len(self._failed) + 1, tx=tx
        )
        return all((row.key_id, row.version) in self._failed for row in left)

    def _finish(self) -> None:
        if self._failed:
            self._state = FAILED
            logger.warning(
                "the rewrap to master key version %s left %s data keys it could"
                " not unwrap",
                self.target,
                len(self._failed),
            )
            return
        self._state = COMPLETE
        logger.info("every data key is wrapped by master key version %s", self.target)


def _retrieve_exception(task: asyncio.Task[Progress]) -> None:
    # Read here, so a read no caller waited for logs no "never retrieved".
    if not task.cancelled():
        task.exception()
