"""The gRPC face of the vault: validates requests, checks access, audits, converts."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from empire.vault.v1 import vault_service_pb2 as pb
from empire.vault.v1 import vault_service_pb2_grpc
from services.vault import backup, validation
from services.vault.audit import (
    OUTCOME_DENIED,
    OUTCOME_FAILURE,
    AuditEntry,
)
from services.vault.envelope import MasterKeyRing
from services.vault.keyring import unwrap_keyring
from services.vault.records import AuditRecord, SecretRecord, VersionRecord
from services.vault.runtime import VaultRuntime
from services.vault.vault import NewValue
from shared.authn import Principal, current_principal
from shared.errors import (
    EmpireError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from shared.pagination import decode_page_token, encode_page_token
from shared.proto_time import timestamp

logger = logging.getLogger(__name__)

READ, WRITE, DESTROY = "secrets:read", "secrets:write", "secrets:destroy"
AUDIT = "audit:read"


class VaultServicer(vault_service_pb2_grpc.VaultServiceServicer):
    def __init__(self, runtime: VaultRuntime) -> None:
        self._runtime = runtime
        self._vault = runtime.vault
        self._max_value = runtime.settings.max_value_bytes

    # Secrets ----------------------------------------------------------------

    async def PutSecret(self, request: pb.PutSecretRequest, context: Any) -> Any:
        new = self._new_value(
            request.key_id, request.value, request, "expected_version"
        )
        secret_type = _secret_type(request.type)
        labels = validation.labels(request.labels)
        rotation_days = validation.rotation_days(request.rotation_frequency_days)
        principal = current_principal()
        async with self._audited(principal, "PutSecret", new.key_id):
            principal.require_scope(WRITE, resource=new.key_id)
            secret, version = await self._vault.put(
                principal.subject, new, secret_type, labels, rotation_days
            )
        return pb.PutSecretResponse(secret=_metadata(secret), version=version)

    async def GetSecret(self, request: pb.GetSecretRequest, context: Any) -> Any:
        key_id = validation.key_id(request.key_id)
        version = validation.version(request.version)
        principal = current_principal()
        async with self._audited(principal, "GetSecret", key_id, version):
            principal.require_scope(READ, resource=key_id)
            plain = await self._vault.get(principal.subject, key_id, version)
        return pb.GetSecretResponse(
            key_id=plain.key_id,
            version=plain.version,
            value=plain.value,
            type=plain.secret_type,  # type: ignore[arg-type]
            create_time=timestamp(plain.create_time_ms or None),
            stale=plain.stale,
            source=plain.source,
        )

    async def ListSecrets(self, request: pb.ListSecretsRequest, context: Any) -> Any:
        prefix = validation.prefix(request.prefix)
        size = validation.page_size(request.page_size)
        filters = [prefix, request.show_deleted]
        after = decode_page_token(
            request.page_token,
            validation.key_position,
            kind="secrets",
            filters=filters,
        )
        principal = current_principal()
        async with self._audited(principal, "ListSecrets", prefix):
            principal.require_scope(READ, resource=prefix)
            records = await self._vault.list_secrets(
                prefix, after or "", size + 1, request.show_deleted
            )
            await self._vault.record(
                AuditEntry(principal.subject, "ListSecrets", prefix)
            )
        page, more = records[:size], len(records) > size
        token = (
            encode_page_token(page[-1].key_id, kind="secrets", filters=filters)
            if more
            else ""
        )
        return pb.ListSecretsResponse(
            secrets=[_metadata(record) for record in page], next_page_token=token
        )

    async def RotateSecret(self, request: pb.RotateSecretRequest, context: Any) -> Any:
        new = self._new_value(
            request.key_id, request.value, request, "expected_version"
        )
        principal = current_principal()
        async with self._audited(principal, "RotateSecret", new.key_id):
            principal.require_scope(WRITE, resource=new.key_id)
            secret, version = await self._vault.rotate(principal.subject, new)
        return pb.RotateSecretResponse(secret=_metadata(secret), version=version)

    async def DeleteSecret(self, request: pb.DeleteSecretRequest, context: Any) -> Any:
        key_id = validation.key_id(request.key_id)
        principal = current_principal()
        async with self._audited(principal, "DeleteSecret", key_id):
            principal.require_scope(WRITE, resource=key_id)
            secret = await self._vault.delete(principal.subject, key_id)
        return pb.DeleteSecretResponse(secret=_metadata(secret))

    async def UndeleteSecret(
        self, request: pb.UndeleteSecretRequest, context: Any
    ) -> Any:
        key_id = validation.key_id(request.key_id)
        principal = current_principal()
        async with self._audited(principal, "UndeleteSecret", key_id):
            principal.require_scope(WRITE, resource=key_id)
            secret = await self._vault.undelete(principal.subject, key_id)
        return pb.UndeleteSecretResponse(secret=_metadata(secret))

    async def DestroySecretVersions(
        self, request: pb.DestroySecretVersionsRequest, context: Any
    ) -> Any:
        key_id = validation.key_id(request.key_id)
        numbers = _destroy_list(request.versions)
        principal = current_principal()
        async with self._audited(principal, "DestroySecretVersions", key_id):
            principal.require_scope(DESTROY, resource=key_id)
            records = await self._vault.destroy(principal.subject, key_id, numbers)
        return pb.DestroySecretVersionsResponse(
            versions=[_version(record) for record in records]
        )

    async def ListDueRotations(
        self, request: pb.ListDueRotationsRequest, context: Any
    ) -> Any:
        prefix = validation.prefix(request.prefix)
        size = validation.page_size(request.page_size)
        within = validation.rotation_days(request.within_days, "within_days")
        filters = [prefix, within]
        after = decode_page_token(
            request.page_token, validation.due_position, kind="due", filters=filters
        )
        position = after or (-(2**62), "")
        principal = current_principal()
        async with self._audited(principal, "ListDueRotations", prefix):
            principal.require_scope(READ, resource=prefix)
            records = await self._vault.list_due(prefix, within, position, size + 1)
            await self._vault.record(
                AuditEntry(principal.subject, "ListDueRotations", prefix)
            )
        page, more = records[:size], len(records) > size
        token = ""
        if more:
            last = page[-1]
            token = encode_page_token(
                [last.next_rotation_ms, last.key_id], kind="due", filters=filters
            )
        return pb.ListDueRotationsResponse(
            rotations=[_due(record) for record in page], next_page_token=token
        )

    # Keys, audit, backups, status ---------------------------------------------

    async def RotateMasterKey(
        self, request: pb.RotateMasterKeyRequest, context: Any
    ) -> Any:
        principal = current_principal()
        async with self._audited(principal, "RotateMasterKey", ""):
            try:
                version = await self._runtime.rotator.rotate(
                    self._runtime.audit, principal.subject
                )
            except Unavailable:
                self._runtime.health.mark_down()
                raise
        progress = await self._runtime.rotator.progress()
        return pb.RotateMasterKeyResponse(
            master_key_version=version, rewrap=_progress(progress)
        )

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Any
    ) -> Any:
        size = validation.page_size(request.page_size)
        filters = _audit_filters(request)
        after = decode_page_token(
            request.page_token,
            validation.sequence_position,
            kind="audit",
            filters=filters,
        )
        # Events name key ids: a prefixed scope sees only its own keys' events,
        # and without a key id filter the listing spans the whole vault.
        current_principal().require_scope(AUDIT, resource=request.key_id)
        events = await self._runtime.store.audit_events(filters, after or 0, size + 1)
        page, more = events[:size], len(events) > size
        token = (
            encode_page_token(page[-1].sequence, kind="audit", filters=filters)
            if more
            else ""
        )
        return pb.ListAuditEventsResponse(
            events=[_event(event) for event in page], next_page_token=token
        )

    async def VerifyAuditLog(
        self, request: pb.VerifyAuditLogRequest, context: Any
    ) -> Any:
        check = await self._runtime.audit.verify()
        if not check.intact:
            logger.warning(
                "audit chain broken at event %s: %s",
                check.first_bad_sequence,
                check.problem,
            )
        return pb.VerifyAuditLogResponse(
            intact=check.intact,
            events_checked=check.events_checked,
            first_bad_sequence=check.first_bad_sequence,
            problem=check.problem,
        )

    async def Backup(
        self, request: pb.BackupRequest, context: Any
    ) -> AsyncIterator[pb.BackupResponse]:
        principal = current_principal()
        async with self._audited(principal, "Backup", ""):
            tables = await self._runtime.store.dump()
            blob = backup.seal_snapshot(self._runtime.backup_key, tables)
            await self._vault.record(AuditEntry(principal.subject, "Backup", ""))
        for chunk in backup.chunks(blob):
            yield pb.BackupResponse(data=chunk)

    async def Restore(
        self, request_iterator: AsyncIterator[pb.RestoreRequest], context: Any
    ) -> Any:
        blob, replace_existing = await self._receive(request_iterator)
        runtime = self._runtime
        principal = current_principal()
        async with self._audited(principal, "Restore", ""):
            snapshot = backup.open_snapshot(
                runtime.backup_key, runtime.root_key, runtime.audit_key, blob
            )
            keyring = _snapshot_keyring(runtime.root_key, snapshot)
            # No rewrap batch runs until the restored keyring is in place.
            async with runtime.rotator.paused():
                await self._replace_all(principal, snapshot, replace_existing)
                if keyring is not None:
                    runtime.cipher.keyring = keyring
                runtime.cache.clear()
            await runtime.rotator.resume()
        secrets, versions, events = snapshot.counts
        return pb.RestoreResponse(
            secrets=secrets, versions=versions, audit_events=events
        )

    async def GetStatus(self, request: pb.GetStatusRequest, context: Any) -> Any:
        runtime = self._runtime
        progress = None
        if not runtime.health.degraded:
            # Bounded like a read: during a stall the status answers from
            # the last known progress instead of waiting out the statement
            # timeout.
            progress = await runtime.rotator.progress_within(
                runtime.settings.database_timeout_seconds
            )
        available = progress is not None and not runtime.health.degraded
        if progress is None:
            progress = runtime.rotator.last_progress
        response = pb.GetStatusResponse(
            database_state=pb.DATABASE_STATE_AVAILABLE
            if available
            else pb.DATABASE_STATE_DEGRADED,
            store=runtime.store.dialect,
            degraded_cache_ttl_seconds=runtime.settings.degraded_cache_ttl_seconds,
            cached_versions=len(runtime.cache),
            master_key_version=runtime.cipher.keyring.current_version,
            rewrap=_progress(progress),
        )
        if runtime.health.degraded_since is not None:
            response.degraded_since.FromMilliseconds(
                int(runtime.health.degraded_since * 1000)
            )
        return response

    # Helpers ----------------------------------------------------------------

    def _new_value(
        self, key_id: str, value: bytes, request: Any, cas_field: str
    ) -> NewValue:
        expected = None
        if request.HasField(cas_field):
            expected = validation.expected_version(getattr(request, cas_field))
        return NewValue(
            validation.key_id(key_id),
            validation.secret_value(value, self._max_value),
            expected,
        )

    async def _receive(
        self, request_iterator: AsyncIterator[pb.RestoreRequest]
    ) -> tuple[bytes, bool]:
        parts: list[bytes] = []
        size, replace_existing, first = 0, False, True
        async for message in request_iterator:
            if first:
                replace_existing, first = message.replace_existing, False
            size += len(message.data)
            if size > self._runtime.settings.max_backup_bytes:
                raise InvalidArgument(
                    "data",
                    "the snapshot exceeds the configured maximum size",
                    reason="BACKUP_TOO_LARGE",
                )
            parts.append(message.data)
        return b"".join(parts), replace_existing

    async def _replace_all(
        self, principal: Principal, snapshot: backup.Snapshot, replace_existing: bool
    ) -> None:
        runtime = self._runtime
        async with runtime.audit.exclusive() as chain:
            if not replace_existing and await runtime.store.count_secrets(chain.tx):
                raise FailedPrecondition(
                    "the vault holds secrets; set replace_existing to replace them",
                    reason="VAULT_NOT_EMPTY",
                )
            await runtime.store.replace_all(chain.tx, snapshot.tables)
            # The restored chain goes on with an event naming the head of
            # the chain it replaced, so that one stays anchored.
            replaced_events, replaced_hash = chain.replaced_head
            await chain.append(
                AuditEntry(
                    principal.subject,
                    "Restore",
                    version=replaced_events,
                    value_hmac=replaced_hash,
                )
            )

    @asynccontextmanager
    async def _audited(
        self, principal: Principal, action: str, key_id: str, version: int = 0
    ) -> AsyncIterator[None]:
        """Records a refused or failed call; successes record their own event."""
        try:
            yield
        except EmpireError as error:
            outcome = (
                OUTCOME_DENIED
                if isinstance(error, PermissionDenied)
                else OUTCOME_FAILURE
            )
            entry = AuditEntry(
                principal.subject, action, key_id, version, outcome, error.reason
            )
            await self._record_failure(entry, error)
            raise

    async def _record_failure(self, entry: AuditEntry, error: EmpireError) -> None:
        if isinstance(error, Unavailable) or self._runtime.health.degraded:
            self._runtime.audit.spool(entry)
            return
        try:
            await self._runtime.audit.record(entry)
        except Unavailable:
            self._runtime.audit.spool(entry)


def _secret_type(value: int) -> int:
    if value not in pb.SecretType.values():
        raise InvalidArgument(
            "type", "is not a known secret type", reason="UNKNOWN_TYPE"
        )
    return value or pb.SECRET_TYPE_GENERIC


def _destroy_list(versions: Any) -> list[int]:
    numbers = list(dict.fromkeys(versions))
    if not numbers:
        raise InvalidArgument("versions", "must name at least one version")
    if len(numbers) > validation.MAX_DESTROY_VERSIONS:
        raise InvalidArgument(
            "versions",
            f"must name at most {validation.MAX_DESTROY_VERSIONS} versions",
            reason="TOO_MANY_VERSIONS",
        )
    if any(number < 1 for number in numbers):
        raise InvalidArgument(
            "versions", "versions count from 1", reason="OUT_OF_RANGE"
        )
    return numbers


AUDITED_ACTIONS = frozenset(
    pb.DESCRIPTOR.services_by_name["VaultService"].methods_by_name
)


def _audit_filters(request: pb.ListAuditEventsRequest) -> dict[str, Any]:
    if request.key_id:
        validation.key_id(request.key_id)
    validation.plain_text(request.actor, "actor", validation.MAX_KEY_ID_LENGTH)
    if request.action and request.action not in AUDITED_ACTIONS:
        raise InvalidArgument(
            "action", "is not a VaultService method name", reason="UNKNOWN_ACTION"
        )
    if request.outcome not in pb.AuditOutcome.values():
        raise InvalidArgument(
            "outcome", "is not a known outcome", reason="UNKNOWN_OUTCOME"
        )
    start_ms = _optional_time(request, "start_time")
    end_ms = _optional_time(request, "end_time")
    if start_ms is not None and end_ms is not None and end_ms < start_ms:
        raise InvalidArgument(
            "end_time", "must not be before start_time", reason="OUT_OF_RANGE"
        )
    return {
        "key_id": request.key_id,
        "actor": request.actor,
        "action": request.action,
        "outcome": int(request.outcome),
        "start_ms": start_ms,
        "end_ms": end_ms,
    }


def _optional_time(request: pb.ListAuditEventsRequest, field: str) -> int | None:
    if not request.HasField(field):
        return None
    return validation.timestamp_ms(getattr(request, field), field)


def _snapshot_keyring(
    root_key: bytes, snapshot: backup.Snapshot
) -> MasterKeyRing | None:
    rows = [(int(row[0]), row[1]) for row in snapshot.tables["vault_master_keys"]]
    return unwrap_keyring(root_key, rows) if rows else None


def _metadata(secret: SecretRecord) -> pb.SecretMetadata:
    return pb.SecretMetadata(
        key_id=secret.key_id,
        type=secret.secret_type,  # type: ignore[arg-type]
        labels=secret.labels,
        rotation_frequency_days=secret.rotation_frequency_days,
        current_version=secret.current_version,
        oldest_version=secret.oldest_version,
        create_time=timestamp(secret.create_time_ms),
        update_time=timestamp(secret.update_time_ms),
        next_rotation_time=timestamp(secret.next_rotation_ms),
        deleted=secret.deleted,
        delete_time=timestamp(secret.delete_time_ms),
    )


def _version(record: VersionRecord) -> pb.SecretVersion:
    return pb.SecretVersion(
        version=record.version,
        state=pb.VERSION_STATE_ENABLED
        if record.sealed is not None
        else pb.VERSION_STATE_DESTROYED,
        create_time=timestamp(record.create_time_ms),
    )


def _due(secret: SecretRecord) -> pb.DueRotation:
    return pb.DueRotation(
        key_id=secret.key_id,
        rotation_frequency_days=secret.rotation_frequency_days,
        last_rotation_time=timestamp(secret.update_time_ms),
        due_time=timestamp(secret.next_rotation_ms),
    )


def _progress(progress: Any) -> pb.RewrapProgress:
    return pb.RewrapProgress(
        state=progress.state,
        target_master_key_version=progress.target_version,
        rewrapped_versions=progress.rewrapped,
        total_versions=progress.total,
        failed_versions=progress.failed,
    )


def _event(event: AuditRecord) -> pb.AuditEvent:
    return pb.AuditEvent(
        sequence=event.sequence,
        time=timestamp(event.time_ms),
        actor=event.actor,
        action=event.action,
        key_id=event.key_id,
        version=event.version,
        outcome=event.outcome,  # type: ignore[arg-type]
        reason=event.reason,
        value_hmac=event.value_hmac,
        previous_hash=event.previous_hash,
        hash=event.hash,
    )
