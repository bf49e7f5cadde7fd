"""The audit chain: what is recorded, and that tampering is found."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from empire.vault.v1 import vault_service_pb2 as pb
from services.vault.audit import AuditEntry
from services.vault.validation import MAX_TIMESTAMP_SECONDS, MIN_TIMESTAMP_SECONDS
from shared.db import open_database
from tests.harness.grpc_errors import bad_request, error_info
from tests.vault.conftest import RunningVault


async def events(vault: RunningVault, **filters: object) -> list[pb.AuditEvent]:
    response = await vault.client.call(
        "ListAuditEvents", pb.ListAuditEventsRequest(page_size=1000, **filters)
    )
    return list(response.events)


async def verify(vault: RunningVault) -> pb.VerifyAuditLogResponse:
    return await vault.client.call("VerifyAuditLog", pb.VerifyAuditLogRequest())


async def test_reads_and_writes_are_recorded_with_actor_and_outcome(
    vault: RunningVault,
) -> None:
    await vault.client.put("k", b"v")
    await vault.client.get("k")

    recorded = await events(vault, key_id="k")

    assert [(e.action, e.version, e.outcome) for e in recorded] == [
        ("PutSecret", 1, pb.AUDIT_OUTCOME_SUCCESS),
        ("GetSecret", 1, pb.AUDIT_OUTCOME_SUCCESS),
    ]
    assert recorded[0].actor == "tester"


async def test_values_appear_only_as_hmacs(vault: RunningVault) -> None:
    await vault.client.put("k", b"very-secret-value")

    recorded = await events(vault, key_id="k")

    assert b"very-secret-value" not in recorded[0].SerializeToString()
    assert len(recorded[0].value_hmac) == 64
    assert recorded[0].value_hmac != ""


async def test_denied_calls_are_recorded(vault: RunningVault) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await vault.client.get("auth/x", scopes=["secrets:read:llm/"])

    denied = await events(vault, outcome=pb.AUDIT_OUTCOME_DENIED)

    assert [(e.action, e.key_id, e.reason) for e in denied] == [
        ("GetSecret", "auth/x", "MISSING_SCOPE")
    ]


async def test_audit_events_page(vault: RunningVault) -> None:
    for number in range(5):
        await vault.client.put(f"k{number}", b"v")

    first = await vault.client.call(
        "ListAuditEvents", pb.ListAuditEventsRequest(page_size=3)
    )
    second = await vault.client.call(
        "ListAuditEvents",
        pb.ListAuditEventsRequest(page_size=3, page_token=first.next_page_token),
    )

    assert [e.sequence for e in first.events] == [1, 2, 3]
    assert [e.sequence for e in second.events] == [4, 5]


async def test_many_events_committed_at_once_are_recorded(
    vault: RunningVault,
) -> None:
    # As many as a flush of the outage spool, or a batch of 256 calls that
    # each destroy 100 versions, appends in one transaction: more values
    # than one SQLite statement may bind.
    entries = [AuditEntry("tester", "GetSecret", f"k{n}") for n in range(25_000)]

    await vault.runtime.audit.record(*entries)
    check = await verify(vault)

    assert check.intact
    assert check.events_checked == 25_000


async def test_intact_chain_verifies(vault: RunningVault) -> None:
    for number in range(4):
        await vault.client.put("k", f"v{number}".encode())

    check = await verify(vault)

    assert check.intact
    assert check.events_checked == 4


async def test_edited_event_is_found(vault: RunningVault) -> None:
    for number in range(4):
        await vault.client.put(f"k{number}", b"v")
    await tamper(
        vault, "UPDATE vault_audit_events SET actor = 'mallory' WHERE sequence = 3"
    )

    check = await verify(vault)

    assert not check.intact
    assert check.first_bad_sequence == 3
    assert check.problem == "HASH_MISMATCH"


async def test_deleted_event_is_found(vault: RunningVault) -> None:
    for number in range(4):
        await vault.client.put(f"k{number}", b"v")
    await tamper(vault, "DELETE FROM vault_audit_events WHERE sequence = 2")

    check = await verify(vault)

    assert not check.intact
    assert check.first_bad_sequence == 2
    assert check.problem == "SEQUENCE_GAP"


async def test_deleted_newest_event_is_found(vault: RunningVault) -> None:
    for number in range(3):
        await vault.client.put(f"k{number}", b"v")
    await tamper(vault, "DELETE FROM vault_audit_events WHERE sequence = 3")

    check = await verify(vault)

    assert not check.intact
    assert check.first_bad_sequence == 3


async def test_reordered_events_are_found(vault: RunningVault) -> None:
    for number in range(4):
        await vault.client.put(f"k{number}", b"v")
    # Swap the contents of events 2 and 3 but keep their sequence numbers.
    await tamper(
        vault, "UPDATE vault_audit_events SET sequence = 100 WHERE sequence = 2"
    )
    await tamper(vault, "UPDATE vault_audit_events SET sequence = 2 WHERE sequence = 3")
    await tamper(
        vault, "UPDATE vault_audit_events SET sequence = 3 WHERE sequence = 100"
    )

    check = await verify(vault)

    assert not check.intact
    assert check.first_bad_sequence == 2


async def test_recomputed_plain_hashes_do_not_fool_the_check(
    vault: RunningVault,
) -> None:
    await vault.client.put("k", b"v")
    await tamper(
        vault,
        "UPDATE vault_audit_events SET actor = 'mallory',"
        " hash = '" + "ab" * 32 + "' WHERE sequence = 1",
    )

    check = await verify(vault)

    assert not check.intact
    assert check.first_bad_sequence == 1


async def tamper(vault: RunningVault, sql: str) -> None:
    db = await open_database(vault.settings.database_url)
    try:
        await db.execute(sql)
    finally:
        await db.close()


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        pytest.param({"key_id": "a//b"}, "key_id", id="key-id"),
        pytest.param({"action": "DropTables"}, "action", id="action"),
        pytest.param({"outcome": 42}, "outcome", id="outcome"),
    ],
)
async def test_bad_audit_filters_are_invalid(
    sqlite_vault: RunningVault, request_fields: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sqlite_vault.client.call(
            "ListAuditEvents", pb.ListAuditEventsRequest(**request_fields)
        )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(caught.value).field_violations[0].field == field


@pytest.mark.parametrize(
    ("request_fields", "field", "reason"),
    [
        pytest.param({"actor": "a\x00b"}, "actor", "CONTROL_CHARACTER", id="nul"),
        pytest.param({"actor": "a\nb"}, "actor", "CONTROL_CHARACTER", id="newline"),
        pytest.param(
            {"start_time": Timestamp(seconds=2**62)},
            "start_time",
            "OUT_OF_RANGE",
            id="far-start",
        ),
        pytest.param(
            {"end_time": Timestamp(seconds=-(2**62))},
            "end_time",
            "OUT_OF_RANGE",
            id="far-end",
        ),
        pytest.param(
            {"start_time": Timestamp(seconds=1, nanos=-1)},
            "start_time",
            "OUT_OF_RANGE",
            id="negative-nanos",
        ),
    ],
)
async def test_audit_filters_no_store_can_hold_are_invalid(
    vault: RunningVault, request_fields: dict[str, object], field: str, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.call(
            "ListAuditEvents", pb.ListAuditEventsRequest(**request_fields)
        )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(caught.value).field_violations[0].field == field
    assert error_info(caught.value).reason == reason


async def test_time_filters_at_the_edges_of_the_range_are_served(
    vault: RunningVault,
) -> None:
    await vault.client.put("k", b"v")

    found = await events(
        vault,
        start_time=Timestamp(seconds=MIN_TIMESTAMP_SECONDS),
        end_time=Timestamp(seconds=MAX_TIMESTAMP_SECONDS, nanos=999_999_999),
    )

    assert [event.action for event in found] == ["PutSecret"]


async def test_verify_during_appends_finds_the_chain_intact(
    vault: RunningVault,
) -> None:
    stop = asyncio.Event()

    async def traffic(number: int) -> None:
        while not stop.is_set():
            await vault.client.put(f"k{number}", b"v")
            await vault.client.get(f"k{number}")

    writers = [asyncio.create_task(traffic(number)) for number in range(8)]
    try:
        checks = [await verify(vault) for _ in range(20)]
        # On a loaded machine twenty checks can all fit between two commits:
        # go on until the writers have appended something.
        while checks[-1].events_checked == checks[0].events_checked:
            assert len(checks) < 5000, "the writers appended nothing"
            checks.append(await verify(vault))
    finally:
        stop.set()
        await asyncio.gather(*writers)

    assert [check.problem for check in checks if not check.intact] == []
    assert checks[-1].events_checked > checks[0].events_checked
