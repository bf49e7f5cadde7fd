"""PutSecret, GetSecret, versions, deletion and destruction, over both stores."""

from __future__ import annotations

import grpc
import pytest

from empire.vault.v1 import vault_service_pb2 as pb
from shared.pagination import encode_page_token
from tests.harness.grpc_errors import bad_request, error_info
from tests.vault.conftest import RunningVault


async def test_put_then_get_returns_the_value(vault: RunningVault) -> None:
    client = vault.client
    put = await client.put(
        "openai_api_key",
        b"sk-test-123",
        type=pb.SECRET_TYPE_API_KEY,
        labels={"team": "llm"},
        rotation_frequency_days=90,
    )
    got = await client.get("openai_api_key")

    assert put.version == 1
    assert put.secret.labels == {"team": "llm"}
    assert put.secret.HasField("next_rotation_time")
    assert got.value == b"sk-test-123"
    assert got.version == 1
    assert got.type == pb.SECRET_TYPE_API_KEY
    assert not got.stale


async def test_each_write_makes_a_new_version(vault: RunningVault) -> None:
    client = vault.client
    await client.put("llm/anthropic", b"one")
    second = await client.put("llm/anthropic", b"two")

    assert second.version == 2
    assert (await client.get("llm/anthropic")).value == b"two"
    assert (await client.get("llm/anthropic", version=1)).value == b"one"


async def test_compare_and_set_zero_creates_only(vault: RunningVault) -> None:
    client = vault.client
    await client.put("db/password", b"first", expected_version=0)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.put("db/password", b"second", expected_version=0)

    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert error_info(caught.value).reason == "VERSION_MISMATCH"
    assert (await client.get("db/password")).value == b"first"


async def test_compare_and_set_on_the_current_version(vault: RunningVault) -> None:
    client = vault.client
    await client.put("k", b"v1")
    await client.put("k", b"v2", expected_version=1)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.put("k", b"v3", expected_version=1)

    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert error_info(caught.value).metadata["current_version"] == "2"


async def test_unknown_secret_is_not_found(vault: RunningVault) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.get("missing")

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).reason == "SECRET_NOT_FOUND"


async def test_unknown_version_is_not_found(vault: RunningVault) -> None:
    await vault.client.put("k", b"v1")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.get("k", version=7)

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).reason == "VERSION_NOT_FOUND"


@pytest.mark.parametrize(
    ("key_id", "reason"),
    [
        pytest.param("", "KEY_ID_EMPTY", id="empty"),
        pytest.param("a" * 257, "KEY_ID_TOO_LONG", id="too-long"),
        pytest.param("/leading", "KEY_ID_MALFORMED", id="leading-slash"),
        pytest.param("a//b", "KEY_ID_MALFORMED", id="double-slash"),
        pytest.param("sp ace", "KEY_ID_MALFORMED", id="space"),
        pytest.param("x/../y", "KEY_ID_MALFORMED", id="dot-dot"),
        pytest.param("../y", "KEY_ID_MALFORMED", id="leading-dot-dot"),
        pytest.param("x/..", "KEY_ID_MALFORMED", id="trailing-dot-dot"),
        pytest.param("x/./y", "KEY_ID_MALFORMED", id="dot-segment"),
    ],
)
async def test_malformed_key_id_is_invalid(
    sqlite_vault: RunningVault, key_id: str, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sqlite_vault.client.put(key_id, b"v")

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == reason
    assert bad_request(caught.value).field_violations[0].field == "key_id"


async def test_oversized_value_is_invalid(sqlite_vault: RunningVault) -> None:
    limit = sqlite_vault.settings.max_value_bytes

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sqlite_vault.client.put("big", b"x" * (limit + 1))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "VALUE_TOO_LARGE"
    assert bad_request(caught.value).field_violations[0].field == "value"


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        pytest.param({f"k{i}": "v" for i in range(65)}, "TOO_MANY_LABELS", id="many"),
        pytest.param({"Bad Key": "v"}, "LABEL_KEY_MALFORMED", id="bad-key"),
        pytest.param({"k": "v" * 257}, "LABEL_VALUE_TOO_LONG", id="long-value"),
    ],
)
async def test_bad_labels_are_invalid(
    sqlite_vault: RunningVault, labels: dict[str, str], reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sqlite_vault.client.put("k", b"v", labels=labels)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == reason
    assert bad_request(caught.value).field_violations[0].field == "labels"


async def test_empty_value_is_invalid(sqlite_vault: RunningVault) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sqlite_vault.client.put("k", b"")

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(caught.value).field_violations[0].field == "value"


async def test_deleted_secret_cannot_be_read_until_undeleted(
    vault: RunningVault,
) -> None:
    client = vault.client
    await client.put("k", b"v")
    deleted = await client.call("DeleteSecret", pb.DeleteSecretRequest(key_id="k"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.get("k")
    await client.call("UndeleteSecret", pb.UndeleteSecretRequest(key_id="k"))

    assert deleted.secret.deleted
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).reason == "SECRET_DELETED"
    assert (await client.get("k")).value == b"v"


async def test_destroyed_version_is_not_found_with_reason(vault: RunningVault) -> None:
    client = vault.client
    await client.put("k", b"v1")
    await client.put("k", b"v2")
    destroyed = await client.call(
        "DestroySecretVersions",
        pb.DestroySecretVersionsRequest(key_id="k", versions=[1]),
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.get("k", version=1)

    assert destroyed.versions[0].state == pb.VERSION_STATE_DESTROYED
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).reason == "VERSION_DESTROYED"
    assert (await client.get("k")).value == b"v2"


async def test_destroying_an_unknown_version_is_not_found(vault: RunningVault) -> None:
    await vault.client.put("k", b"v1")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.call(
            "DestroySecretVersions",
            pb.DestroySecretVersionsRequest(key_id="k", versions=[1, 9]),
        )

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).reason == "VERSION_NOT_FOUND"
    assert (await vault.client.get("k", version=1)).value == b"v1"


async def test_versions_beyond_the_maximum_are_pruned(vault: RunningVault) -> None:
    client = vault.client
    keep = vault.settings.max_versions
    for number in range(keep + 2):
        last = await client.put("k", f"v{number}".encode())

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.get("k", version=2)

    assert last.secret.oldest_version == 3
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await client.get("k", version=3)).value == b"v2"


async def test_rotate_writes_a_new_version_keeping_metadata(
    vault: RunningVault,
) -> None:
    client = vault.client
    await client.put("k", b"old", labels={"a": "b"}, rotation_frequency_days=30)
    rotated = await client.call(
        "RotateSecret", pb.RotateSecretRequest(key_id="k", value=b"new")
    )

    assert rotated.version == 2
    assert rotated.secret.labels == {"a": "b"}
    assert rotated.secret.rotation_frequency_days == 30
    assert (await client.get("k")).value == b"new"


async def test_rotating_a_missing_secret_is_not_found(vault: RunningVault) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.call(
            "RotateSecret", pb.RotateSecretRequest(key_id="nope", value=b"v")
        )

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_secrets_pages_by_prefix_without_values(vault: RunningVault) -> None:
    client = vault.client
    for name in ["llm/a", "llm/b", "llm/c", "other"]:
        await client.put(name, b"secret-value")

    first = await client.call(
        "ListSecrets", pb.ListSecretsRequest(prefix="llm/", page_size=2)
    )
    second = await client.call(
        "ListSecrets",
        pb.ListSecretsRequest(
            prefix="llm/", page_size=2, page_token=first.next_page_token
        ),
    )

    assert [s.key_id for s in first.secrets] == ["llm/a", "llm/b"]
    assert [s.key_id for s in second.secrets] == ["llm/c"]
    assert second.next_page_token == ""
    assert b"secret-value" not in first.SerializeToString()


async def test_page_token_from_another_filter_is_invalid(
    sqlite_vault: RunningVault,
) -> None:
    for name in ["a1", "a2"]:
        await sqlite_vault.client.put(name, b"v")
    first = await sqlite_vault.client.call(
        "ListSecrets", pb.ListSecretsRequest(page_size=1)
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sqlite_vault.client.call(
            "ListSecrets",
            pb.ListSecretsRequest(prefix="a", page_token=first.next_page_token),
        )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(caught.value).field_violations[0].field == "page_token"


async def test_list_due_rotations_within_a_window(vault: RunningVault) -> None:
    client = vault.client
    await client.put("soon", b"v", rotation_frequency_days=5)
    await client.put("later", b"v", rotation_frequency_days=60)
    await client.put("never", b"v")

    due = await client.call(
        "ListDueRotations", pb.ListDueRotationsRequest(within_days=30)
    )

    assert [r.key_id for r in due.rotations] == ["soon"]
    assert due.rotations[0].rotation_frequency_days == 5


EMPTY_AUDIT_FILTERS = {
    "key_id": "",
    "actor": "",
    "action": "",
    "outcome": 0,
    "start_ms": None,
    "end_ms": None,
}


@pytest.mark.parametrize(
    ("method", "request_type", "kind", "filters", "sane", "forged"),
    [
        pytest.param(
            "ListSecrets",
            pb.ListSecretsRequest,
            "secrets",
            ["", False],
            "a",
            "a\x00b",
            id="secrets-nul",
        ),
        pytest.param(
            "ListAuditEvents",
            pb.ListAuditEventsRequest,
            "audit",
            EMPTY_AUDIT_FILTERS,
            1,
            2**70,
            id="audit-huge",
        ),
        pytest.param(
            "ListDueRotations",
            pb.ListDueRotationsRequest,
            "due",
            ["", 0],
            [0, "k"],
            [2**70, "k"],
            id="due-huge",
        ),
        pytest.param(
            "ListDueRotations",
            pb.ListDueRotationsRequest,
            "due",
            ["", 0],
            [0, "k"],
            [0, "a\x00b"],
            id="due-nul",
        ),
    ],
)
async def test_forged_page_token_positions_are_invalid(
    vault: RunningVault,
    method: str,
    request_type: type,
    kind: str,
    filters: object,
    sane: object,
    forged: object,
) -> None:
    # The token's digest is no signature: anyone can build one, so the one
    # built with a sane position is served.
    def token(position: object) -> str:
        return encode_page_token(position, kind=kind, filters=filters)

    await vault.client.call(method, request_type(page_token=token(sane)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.call(method, request_type(page_token=token(forged)))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(caught.value).field_violations[0].field == "page_token"
