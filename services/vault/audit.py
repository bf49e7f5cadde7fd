"""The audit log: a keyed hash chain of events, appended in group commits.

Each event's hash is an HMAC, under a key derived from the master key, over its
fields and the previous event's hash; so an edited, deleted or reordered event
breaks the chain, and someone who can write the database but lacks the master
key cannot forge a consistent one.

Every call waits until its event is committed (fail-closed). Calls that arrive
together share one transaction: writes run their statements in it, in arrival
order, and all their events are inserted with one statement, so a burst costs
one commit instead of one per call. Each of those transactions first locks the
chain head, so the batches of several replicas sharing one database queue
instead of colliding on a sequence number; a batch that writes then runs its
`before_writes` step once (the keyring's reload), whatever its size.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from services.vault.records import AuditRecord, ReadResult
from services.vault.store import GENESIS_HASH, VaultStore
from shared.db import CONFLICT_REASON, UNAVAILABLE_REASON, Executor, UniqueViolation
from shared.errors import Aborted, EmpireError, Unavailable

logger = logging.getLogger(__name__)

OUTCOME_SUCCESS, OUTCOME_DENIED, OUTCOME_FAILURE = 1, 2, 3
_MAX_BATCH = 256
_BATCH_ATTEMPTS = 5
_RETRY_SECONDS = 0.01
T = TypeVar("T")

# A write's statements, run inside the shared transaction; returns the events
# to append and the caller's result. It must raise any domain error before its
# first write statement, so a refused write leaves nothing in the transaction.
Mutation = Callable[[Executor], Awaitable[tuple[list["AuditEntry"], Any]]]


@dataclass(frozen=True)
class AuditEntry:
    """An event before it takes its place in the chain."""

    actor: str
    action: str
    key_id: str = ""
    version: int = 0
    outcome: int = OUTCOME_SUCCESS
    reason: str = ""
    value_hmac: str = ""
    time_ms: int = field(default_factory=lambda: int(time.time() * 1000))


@dataclass(frozen=True)
class ChainCheck:
    intact: bool
    events_checked: int
    first_bad_sequence: int = 0
    problem: str = ""


class ChainRewrite:
    """The transaction of `AuditLog.exclusive`, holding the chain head."""

    def __init__(self, log: AuditLog, tx: Executor, head: tuple[int, str]) -> None:
        self.tx = tx
        # The head when the transaction took the chain: what a rewrite replaces.
        self.replaced_head = head
        self._log = log

    async def append(self, *entries: AuditEntry) -> None:
        """Chains `entries` after the head the transaction now holds."""
        store = self._log._store
        head = await store.audit_head(self.tx) or (0, GENESIS_HASH)
        await store.append_audit(self.tx, self._log._link(head, list(entries)))


# Turns the row a batched read found (None: no such secret) into the events to
# append and the caller's result; raises a domain error to refuse.
ReadContinuation = Callable[[ReadResult | None], tuple[list["AuditEntry"], Any]]


@dataclass(eq=False)
class _Job:
    future: asyncio.Future[Any]
    entries: list[AuditEntry] = field(default_factory=list)
    mutate: Mutation | None = None
    read: tuple[str, int] | None = None
    then: ReadContinuation | None = None
    # A read is taken once its batch has its row: its event is then on its way
    # into that transaction. Until then it may be withdrawn, and is skipped.
    taken: bool = False
    withdrawn: bool = False
    patience: asyncio.TimerHandle | None = None


def chain_hash(key: bytes, event: AuditRecord) -> str:
    fields = [
        event.sequence,
        event.time_ms,
        event.actor,
        event.action,
        event.key_id,
        event.version,
        event.outcome,
        event.reason,
        event.value_hmac,
        event.previous_hash,
    ]
    message = json.dumps(fields, separators=(",", ":")).encode()
    return hmac.digest(key, message, "sha256").hex()


class AuditLog:
    """Appends events to the chain; one per process, shared by every RPC."""

    def __init__(
        self,
        store: VaultStore,
        key: bytes,
        max_pending: int,
        before_writes: Callable[[Executor], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._key = key
        self._max_pending = max_pending
        self._before_writes = before_writes
        self._lock = asyncio.Lock()
        self._queue: list[_Job] = []
        self._writer: asyncio.Task[None] | None = None
        # Events of reads served from memory while the database was down.
        self._spooled: list[AuditEntry] = []

    @property
    def spooled(self) -> int:
        return len(self._spooled)

    async def record(self, *entries: AuditEntry) -> None:
        """Appends `entries`; returns once committed, raises if they cannot be."""
        await self._submit(_Job(self._future(), list(entries)))

    async def read(
        self,
        key_id: str,
        version: int,
        then: ReadContinuation,
        patience: float | None = None,
        on_stall: Callable[[], None] | None = None,
    ) -> Any:
        """Reads a secret in the next batch (one query for every read in it),
        then appends the events `then` returns before answering.

        With `patience`, a read whose batch has not got its row by then is
        withdrawn: it fails `Unavailable` and leaves no event behind, so the
        caller may answer from memory and spool its own event instead, and
        `on_stall` is called (even if the caller has gone meanwhile).
        """
        job = _Job(self._future(), read=(key_id, version), then=then)
        if patience is not None:
            job.patience = asyncio.get_running_loop().call_later(
                patience, _withdraw, job, on_stall
            )
        return await self._submit(job)

    async def write(self, mutate: Mutation) -> Any:
        """Runs `mutate` in a chained transaction; its events commit with it."""
        return await self._submit(_Job(self._future(), mutate=mutate))

    async def close(self) -> None:
        """Waits for events already queued to be committed (or to fail)."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)

    def spool(self, entry: AuditEntry) -> bool:
        """Keeps the event of a degraded read in memory until the database is back.

        False when the spool is full: the read must then be refused.
        """
        if len(self._spooled) >= self._max_pending:
            return False
        self._spooled.append(entry)
        return True

    async def flush_spool(self) -> None:
        if not self._spooled:
            return
        entries, self._spooled = self._spooled, []
        try:
            await self.record(*entries)
        except BaseException:
            self._spooled = entries + self._spooled
            raise
        logger.info("recorded %s audit events held during the outage", len(entries))

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[ChainRewrite]:
        """A transaction that holds the chain (against every replica) and may
        rewrite it whole, as a restore does."""
        async with self._lock, self._store.db.transaction() as tx:
            head = await self._store.lock_audit_head(tx)
            yield ChainRewrite(self, tx, head)

    async def verify(self) -> ChainCheck:
        # The head read first names events that must all be there; events
        # appended while the check reads are checked too, but not required.
        first_head = await self._store.audit_head() or (0, GENESIS_HASH)
        expected_sequence, previous = 1, GENESIS_HASH
        checked = 0
        while True:
            events = await self._store.audit_events({}, expected_sequence - 1, 1000)
            for event in events:
                checked += 1
                problem = self._check_link(event, expected_sequence, previous)
                if problem:
                    return ChainCheck(False, checked, *problem)
                if event.sequence == first_head[0] and event.hash != first_head[1]:
                    return ChainCheck(False, checked, event.sequence, "SEQUENCE_GAP")
                expected_sequence, previous = event.sequence + 1, event.hash
            if len(events) < 1000:
                break
        last = expected_sequence - 1
        last_head = await self._store.audit_head() or (0, GENESIS_HASH)
        if first_head[0] > last or last_head[0] < last:
            # Events the head counts were deleted, or the head was moved back.
            return ChainCheck(False, checked, expected_sequence, "SEQUENCE_GAP")
        if last_head[0] == last and last_head[1] != previous:
            return ChainCheck(False, checked, last, "SEQUENCE_GAP")
        return ChainCheck(True, checked)

    def _check_link(
        self, event: AuditRecord, expected_sequence: int, previous: str
    ) -> tuple[int, str] | None:
        """(first bad sequence, problem) when `event` does not follow `previous`."""
        if event.sequence != expected_sequence:
            return expected_sequence, "SEQUENCE_GAP"
        if event.previous_hash != previous:
            return event.sequence, "CHAIN_BROKEN"
        if not hmac.compare_digest(chain_hash(self._key, event), event.hash):
            return event.sequence, "HASH_MISMATCH"
        return None

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, job: _Job) -> Any:
        self._queue.append(job)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        return await job.future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
            batch = [job for job in batch if not job.withdrawn]
            if not batch:
                continue
            try:
                outcomes = await self._commit_with_retries(batch)
            except BaseException as error:  # noqa: BLE001 - handed to every caller
                failure = _batch_failure(error)
                for job in batch:
                    _settle(job.future, failure, None)
                continue
            for job, (refusal, result) in zip(batch, outcomes, strict=True):
                _settle(job.future, refusal, result)

    async def _commit_with_retries(
        self, batch: list[_Job]
    ) -> list[tuple[BaseException | None, Any]]:
        for attempt in range(_BATCH_ATTEMPTS):
            try:
                return await self._commit(batch)
            except (UniqueViolation, Aborted) as error:
                # Under the head lock, the vault's own transactions no longer
                # clash; a wait for a head held too long (a stuck replica) or
                # a deadlock with a writer outside the vault still can. The
                # retry runs the whole batch again on fresh rows.
                if not _lost_conflict(error) or attempt == _BATCH_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(_RETRY_SECONDS * (1 + random.random()) * 2**attempt)
        raise AssertionError("unreachable")

    async def _commit(
        self, batch: list[_Job]
    ) -> list[tuple[BaseException | None, Any]]:
        outcomes: list[tuple[BaseException | None, Any]] = []
        async with self._lock, self._store.db.transaction() as tx:
            # Locked first: the batch's rows are read only once no other
            # replica can append, so chain order is commit order.
            head = await self._store.lock_audit_head(tx)
            if self._before_writes is not None and any(
                job.mutate is not None for job in batch
            ):
                # Once for the whole batch, and under the lock: what it learns
                # (a master key another replica added) holds for every write.
                await self._before_writes(tx)
            # The batch's reads see the state before its writes, so their
            # events come first in the chain.
            reads = [
                job.read for job in batch if job.read is not None and not job.withdrawn
            ]
            rows = await self._store.read_many(tx, reads) if reads else {}
            for job in batch:
                _take(job)
            read_entries: list[AuditEntry] = []
            entries: list[AuditEntry] = []
            outcome: tuple[BaseException | None, Any, list[AuditEntry]]
            for job in batch:
                if job.withdrawn:
                    outcome = (None, None, [])
                elif job.read is not None:
                    outcome = _finish_read(job, rows.get(job.read))
                    read_entries.extend(outcome[2])
                else:
                    outcome = await _run(job, tx)
                    entries.extend(outcome[2])
                outcomes.append(outcome[:2])
            entries = read_entries + entries
            if entries:
                await self._store.append_audit(tx, self._link(head, entries))
        return outcomes

    def _link(
        self, head: tuple[int, str], entries: list[AuditEntry]
    ) -> list[AuditRecord]:
        sequence, previous = head
        records = []
        for entry in entries:
            sequence += 1
            record = AuditRecord(
                sequence=sequence,
                time_ms=entry.time_ms,
                actor=entry.actor,
                action=entry.action,
                key_id=entry.key_id,
                version=entry.version,
                outcome=entry.outcome,
                reason=entry.reason,
                value_hmac=entry.value_hmac,
                previous_hash=previous,
                hash="",
            )
            record = replace(record, hash=chain_hash(self._key, record))
            records.append(record)
            previous = record.hash
        return records


async def _run(
    job: _Job, tx: Executor
) -> tuple[BaseException | None, Any, list[AuditEntry]]:
    if job.mutate is None:
        return None, None, job.entries
    try:
        entries, result = await job.mutate(tx)
    except Unavailable:
        raise  # the transaction itself is lost: the whole batch fails
    except Aborted as error:
        if _lost_conflict(error):
            raise  # likewise, and the batch is retried
        return error, None, []
    except EmpireError as error:
        return error, None, []
    return None, result, entries


def _take(job: _Job) -> None:
    """From here on the read's event may commit: the reader waits for it."""
    if job.read is not None and not job.withdrawn:
        job.taken = True
        if job.patience is not None:
            job.patience.cancel()


def _withdraw(job: _Job, on_stall: Callable[[], None] | None) -> None:
    """A read whose batch has not reached the database in time gives up on it."""
    if job.taken or (job.future.done() and not job.future.cancelled()):
        return  # its event may be committing, or its batch has answered it
    job.withdrawn = True
    if not job.future.done():
        job.future.set_exception(
            Unavailable(
                "the vault database did not answer in time",
                reason=UNAVAILABLE_REASON,
            )
        )
    if on_stall is not None:
        on_stall()


def _finish_read(
    job: _Job, row: ReadResult | None
) -> tuple[BaseException | None, Any, list[AuditEntry]]:
    assert job.then is not None
    try:
        entries, result = job.then(row)
    except EmpireError as error:
        return error, None, []
    return None, result, entries


def _settle(
    future: asyncio.Future[Any], error: BaseException | None, result: Any
) -> None:
    if future.done():
        return  # the caller gave up (cancelled); its outcome stands in the log
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _lost_conflict(error: BaseException) -> bool:
    """Whether the batch's transaction lost to another one and may be rerun."""
    return isinstance(error, UniqueViolation) or (
        isinstance(error, Aborted) and error.reason == CONFLICT_REASON
    )


def _batch_failure(error: BaseException) -> BaseException:
    """What every caller of a batch that could not commit is told."""
    if isinstance(error, Unavailable):
        return error
    if _lost_conflict(error):
        logger.warning("an audit batch kept losing conflicts: %s", error)
        return Aborted(
            "the call kept conflicting with concurrent calls; retry",
            reason="AUDIT_CONFLICT",
        )
    logger.error("cannot record audit events", exc_info=error)
    return Unavailable(
        "the audit log cannot record the call", reason="AUDIT_UNAVAILABLE"
    )
