"""Scopes with key prefixes, checked before a secret's existence."""

from __future__ import annotations

import grpc
import pytest

from empire.vault.v1 import vault_service_pb2 as pb
from tests.harness.grpc_errors import error_info
from tests.vault.conftest import RunningVault

LLM_READER = ["secrets:read:llm/"]


async def test_prefixed_scope_reads_its_own_secrets(vault: RunningVault) -> None:
    await vault.client.put("llm/openai", b"sk-1")

    got = await vault.client.get("llm/openai", scopes=LLM_READER)

    assert got.value == b"sk-1"


async def test_prefixed_scope_cannot_read_other_secrets(vault: RunningVault) -> None:
    await vault.client.put("auth/signing", b"private")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.get("auth/signing", scopes=LLM_READER)

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).reason == "MISSING_SCOPE"


async def test_denial_does_not_reveal_existence(vault: RunningVault) -> None:
    await vault.client.put("auth/exists", b"v")

    answers = []
    for key_id in ["auth/exists", "auth/does-not-exist"]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await vault.client.get(key_id, scopes=LLM_READER)
        answers.append((caught.value.code(), caught.value.details()))

    assert answers[0] == answers[1]
    assert answers[0][0] == grpc.StatusCode.PERMISSION_DENIED


async def test_read_scope_cannot_write(vault: RunningVault) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.call(
            "PutSecret",
            pb.PutSecretRequest(key_id="llm/x", value=b"v"),
            scopes=LLM_READER,
        )

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_prefixed_write_scope_is_limited_to_its_prefix(
    vault: RunningVault,
) -> None:
    scopes = ["secrets:write:llm/"]
    await vault.client.call(
        "PutSecret", pb.PutSecretRequest(key_id="llm/ok", value=b"v"), scopes=scopes
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.call(
            "PutSecret",
            pb.PutSecretRequest(key_id="cache/no", value=b"v"),
            scopes=scopes,
        )

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_listing_outside_the_prefix_is_denied(vault: RunningVault) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.call(
            "ListSecrets", pb.ListSecretsRequest(), scopes=LLM_READER
        )

    listed = await vault.client.call(
        "ListSecrets", pb.ListSecretsRequest(prefix="llm/"), scopes=LLM_READER
    )

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert list(listed.secrets) == []


async def test_destroy_needs_the_destroy_scope(vault: RunningVault) -> None:
    await vault.client.put("k", b"v")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.call(
            "DestroySecretVersions",
            pb.DestroySecretVersionsRequest(key_id="k", versions=[1]),
            scopes=["secrets:write"],
        )

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await vault.client.get("k")).value == b"v"


async def test_master_key_rotation_needs_vault_admin(vault: RunningVault) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.call(
            "RotateMasterKey",
            pb.RotateMasterKeyRequest(),
            scopes=["secrets:write", "secrets:read"],
        )

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_call_without_token_is_unauthenticated(vault: RunningVault) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vault.client.stub.GetSecret(pb.GetSecretRequest(key_id="k"))

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_prefixed_audit_scope_cannot_read_other_keys_events(
    vault: RunningVault,
) -> None:
    await vault.client.put("auth/signing", b"private")
    await vault.client.put("llm/openai", b"sk-1")
    scopes = ["audit:read:llm/"]

    denied = []
    for request in [
        pb.ListAuditEventsRequest(),
        pb.ListAuditEventsRequest(key_id="auth/signing"),
        pb.ListAuditEventsRequest(key_id="auth/does-not-exist"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await vault.client.call("ListAuditEvents", request, scopes=scopes)
        denied.append((caught.value.code(), caught.value.details()))
    own = await vault.client.call(
        "ListAuditEvents", pb.ListAuditEventsRequest(key_id="llm/openai"), scopes=scopes
    )

    # Refused alike, whether the other key exists or not.
    assert set(denied) == {(grpc.StatusCode.PERMISSION_DENIED, denied[0][1])}
    assert [event.key_id for event in own.events] == ["llm/openai"]


@pytest.mark.parametrize(
    "method, request_message, scope",
    [
        pytest.param(
            "RotateMasterKey",
            pb.RotateMasterKeyRequest(),
            "vault:admin:llm/",
            id="rotate-master-key",
        ),
        pytest.param(
            "VerifyAuditLog",
            pb.VerifyAuditLogRequest(),
            "audit:read:llm/",
            id="verify-audit-log",
        ),
        pytest.param(
            "GetStatus", pb.GetStatusRequest(), "vault:status:llm/", id="status"
        ),
    ],
)
async def test_whole_vault_calls_need_an_unqualified_scope(
    sqlite_vault: RunningVault, method: str, request_message: object, scope: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sqlite_vault.client.call(method, request_message, scopes=[scope])

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).reason == "MISSING_SCOPE"


async def test_backup_and_restore_need_an_unqualified_admin_scope(
    sqlite_vault: RunningVault,
) -> None:
    client = sqlite_vault.client
    metadata = client.metadata(["vault:admin:llm/"])
    with pytest.raises(grpc.aio.AioRpcError) as backup:
        stream = client.stub.Backup(pb.BackupRequest(), metadata=metadata, timeout=20)
        [chunk async for chunk in stream]
    with pytest.raises(grpc.aio.AioRpcError) as restore:
        await client.stub.Restore(
            iter([pb.RestoreRequest(data=b"x", replace_existing=True)]),
            metadata=metadata,
            timeout=20,
        )

    assert backup.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert restore.value.code() == grpc.StatusCode.PERMISSION_DENIED
