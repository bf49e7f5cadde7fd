"""No secret reaches a log line or an error: every service, at DEBUG.

Each test runs a service's usual flows and its failures (a wrong API key, a
tampered or revoked token, a provider that quotes the prompt or the key, a
value too large) with every logger at DEBUG, then looks for each secret in
every record (message, extra fields, traceback) and in everything a failed
call told its caller (details, trailing metadata, the rich error details).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status

from empire.auth.v1 import auth_service_pb2 as auth_pb
from empire.cache.v1 import cache_service_pb2 as cache_pb
from empire.llm.v1 import llm_service_pb2 as llm_pb
from empire.vault.v1 import vault_service_pb2 as vault_pb
from services.cache.app import create_service as create_cache
from shared.clients import bearer, connect
from shared.logs import JsonFormatter
from tests.auth.harness import auth_settings, running_auth
from tests.cache.conftest import cache_settings, put_route
from tests.harness import fake_providers as faults
from tests.harness.fake_providers import FakeProvider, Flavor
from tests.harness.servers import serve
from tests.harness.tokens import LocalIssuer
from tests.llm.harness import start_llm, user
from tests.vault.conftest import running_vault, vault_settings


class Exposure:
    """Everything a log reader or a caller was shown during a test."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG)
        self._caplog = caplog
        self._told: list[str] = []

    async def failure(self, call: Awaitable[Any]) -> grpc.aio.AioRpcError:
        """The error `call` failed with, kept with all it carried."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        self.told(caught.value)
        return caught.value

    def told(self, error: grpc.aio.AioRpcError) -> None:
        self._told.append(error.details() or "")
        for key, value in error.trailing_metadata() or ():
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            self._told.append(f"{key}: {text}")
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        for detail in [] if status is None else status.details:
            self._told.append(str(detail))
            self._told.append(detail.value.decode("latin-1"))

    def shown(self, text: str) -> None:
        """Text a caller saw in an answer (a health report's last error)."""
        self._told.append(text)

    def texts(self) -> list[str]:
        formatter = JsonFormatter()
        lines = []
        for record in self._caplog.records:
            lines.append(formatter.format(record))
            lines.append(repr(record.__dict__))
        return lines + self._told

    def assert_hides(self, secrets: list[str], *, fragment: int = 24) -> None:
        """Neither a secret nor its last `fragment` characters (a signature, a
        key's body) appear anywhere."""
        texts = self.texts()
        assert any("empire.access" in text for text in texts)  # logs were seen
        for secret in secrets:
            assert secret
            for piece in {secret, secret[-fragment:]}:
                for text in texts:
                    assert piece not in text, f"{piece!r} in {text[:2000]}"


def tampered(token: str) -> str:
    """The same token with its signature spoiled (its body still readable)."""
    return token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")


async def test_auth_tells_no_credential_in_logs_or_errors(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    exposure = Exposure(caplog)
    settings = auth_settings(sqlite_url, AUTH_REFRESH_REUSE_GRACE_SECONDS="0")
    secrets = [settings.bootstrap_api_key or ""]

    async with running_auth(settings) as auth:
        stub = auth.stub
        secrets.append(auth.admin_token)
        issued = await auth.issue(include_refresh_token=True)
        secrets += [issued.access_token, issued.refresh_token]
        created = await stub.CreateApiKey(
            auth_pb.CreateApiKeyRequest(subject="svc", scopes=["cache:use"]),
            metadata=auth.as_admin(),
        )
        secrets.append(created.secret)
        wrong_key = created.secret[:-3] + "zzz"
        wrong_refresh = tampered(issued.refresh_token)
        secrets += [wrong_key, wrong_refresh, tampered(auth.admin_token)]

        # A spoiled or unknown credential, wherever it is presented.
        for api_key in (wrong_key, created.secret + "x", created.secret + "\x00"):
            await exposure.failure(
                stub.ExchangeApiKey(auth_pb.ExchangeApiKeyRequest(api_key=api_key))
            )
        await exposure.failure(
            stub.RefreshToken(auth_pb.RefreshTokenRequest(refresh_token=wrong_refresh))
        )
        await exposure.failure(
            stub.ListApiKeys(
                auth_pb.ListApiKeysRequest(),
                metadata=(bearer(tampered(auth.admin_token)),),
            )
        )
        await exposure.failure(
            stub.RevokeToken(
                auth_pb.RevokeTokenRequest(access_token=tampered(issued.access_token)),
                metadata=auth.as_admin(),
            )
        )
        # A credential pasted into a field that names one by id.
        for pasted in (created.secret, issued.access_token):
            await exposure.failure(
                stub.RevokeApiKey(
                    auth_pb.RevokeApiKeyRequest(api_key_id=pasted),
                    metadata=auth.as_admin(),
                )
            )
            await exposure.failure(
                stub.RevokeToken(
                    auth_pb.RevokeTokenRequest(token_id=pasted),
                    metadata=auth.as_admin(),
                )
            )
        # A reused refresh token revokes its family; its tokens then fail.
        refreshed = await stub.RefreshToken(
            auth_pb.RefreshTokenRequest(refresh_token=issued.refresh_token)
        )
        secrets += [refreshed.access_token, refreshed.refresh_token]
        await exposure.failure(
            stub.RefreshToken(
                auth_pb.RefreshTokenRequest(refresh_token=issued.refresh_token)
            )
        )
        await exposure.failure(
            stub.ListApiKeys(
                auth_pb.ListApiKeysRequest(),
                metadata=(bearer(refreshed.access_token),),
            )
        )

    exposure.assert_hides(secrets)


async def test_vault_tells_no_secret_value_in_logs_or_errors(
    sqlite_url: str, issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    exposure = Exposure(caplog)
    value = b"vault-value-Vq3Lr8Zt1Wx6Kp0Nj5Hs"
    rotated = b"vault-value-Rotated-Mb2Xc7Qd4Ye9"
    settings = vault_settings(sqlite_url, b"m" * 32)

    async with running_vault(settings, issuer) as vault:
        client = vault.client
        await client.put("llm/openai", value)
        assert (await client.get("llm/openai")).value == value
        await client.call(
            "RotateSecret",
            vault_pb.RotateSecretRequest(key_id="llm/openai", value=rotated),
        )

        # Writes that fail carry the value they refused.
        await exposure.failure(client.put("llm/openai", value, expected_version=1))
        await exposure.failure(client.put("bad key\x00", value))
        await exposure.failure(client.put("llm/huge", value * 100_000))
        await exposure.failure(
            client.call(
                "PutSecret",
                vault_pb.PutSecretRequest(key_id="llm/openai", value=value),
                scopes=["secrets:write:other/"],
            )
        )
        await exposure.failure(client.get("llm/openai", scopes=["secrets:read:other/"]))
        token = issuer.token(scopes=["*"])
        secrets = [value.decode(), rotated.decode(), token, tampered(token)]
        await exposure.failure(
            client.stub.GetSecret(
                vault_pb.GetSecretRequest(key_id="llm/openai"),
                metadata=(bearer(tampered(token)),),
            )
        )
        # A backup restored over the vault, and one that is not a backup.
        backup = [
            vault_pb.RestoreRequest(data=part.data)
            async for part in client.stub.Backup(
                vault_pb.BackupRequest(), metadata=client.metadata()
            )
        ]
        backup[0].replace_existing = True
        await client.stub.Restore(iter(backup), metadata=client.metadata())
        await exposure.failure(
            client.stub.Restore(
                iter([vault_pb.RestoreRequest(data=value)]),
                metadata=client.metadata(),
            )
        )
        await client.call(
            "DestroySecretVersions",
            vault_pb.DestroySecretVersionsRequest(key_id="llm/openai", versions=[1]),
        )
        await exposure.failure(client.get("llm/openai", version=1))
        await client.call("ListAuditEvents", vault_pb.ListAuditEventsRequest())

    exposure.assert_hides(secrets, fragment=16)


async def test_cache_tells_no_value_in_logs_or_errors(
    sqlite_url: str, issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    exposure = Exposure(caplog)
    value = b"cache-value-Hq8Wd2Lm5Zr7Tx3Bv9Cn"
    settings = cache_settings(sqlite_url)
    service = await create_cache(settings)
    token = issuer.token(scopes=["*"])
    secrets = [value.decode(), token, tampered(token)]

    async with serve(service, settings.server, issuer.verifier()) as server:
        client = connect("cache", server.target, token=token, timeout=10.0)
        try:
            await put_route(client)
            lookup = cache_pb.LookupRequest(
                route_id="api_offers", key="offers", request_lease=True
            )
            missed = await client.Lookup(lookup)
            secrets.append(missed.lease_token)
            store = cache_pb.StoreRequest(
                route_id="api_offers",
                key="offers",
                value=value,
                lease_token=missed.lease_token,
            )
            await client.Store(store)
            assert (await client.Lookup(lookup)).value == value

            # Stores that fail carry the value they refused.
            store.lease_token = "not-a-lease"
            await exposure.failure(client.Store(store))
            store.ClearField("lease_token")
            store.route_id = "no_such_route"
            await exposure.failure(client.Store(store))
            store.route_id, store.value = "api_offers", value * 200_000
            await exposure.failure(client.Store(store))
            store.value, store.key = value, "bad\x00key"
            await exposure.failure(client.Store(store))
            await exposure.failure(
                client.stub.Lookup(lookup, metadata=(bearer(tampered(token)),))
            )
            await client.Invalidate(
                cache_pb.InvalidateRequest(route_id="api_offers", key="offers")
            )
        finally:
            await client.close()

    exposure.assert_hides(secrets, fragment=16)


API_KEY = "sk-contract-Pz4Kq9Wm2Xv7Rb5Ln8Tc3Hd6"
PROMPT = "Summarise the heliotrope ledger for marmoset-4471 quietly"
PROMPT_WORDS = ["heliotrope", "marmoset-4471", "Summarise the heliotrope"]


@pytest.mark.parametrize("flavor", ["openai", "anthropic"])
async def test_llm_tells_no_prompt_or_api_key_in_logs_or_errors(
    sqlite_url: str,
    issuer: LocalIssuer,
    caplog: pytest.LogCaptureFixture,
    flavor: Flavor,
) -> None:
    exposure = Exposure(caplog)
    environ = {"EMPIRE_LLM_PROVIDER_KEY_LLM_OPENAI": API_KEY}
    async with FakeProvider(flavor, model="m", api_key=API_KEY) as fake:
        async for llm in start_llm(issuer, sqlite_url, environ=environ):
            client = llm.client
            await client.put("openai", fake, api_key_id="llm/openai")
            await client.complete(PROMPT)
            assert (await client.stream(PROMPT)).error is None

            # Providers that fail and quote the prompt, or the key, back.
            refusals = [
                faults.content_policy(quote_prompt=True),
                faults.error_event(
                    "invalid_request_error",
                    message=f"The key {API_KEY} has no access to model m.",
                ),
                faults.error_event(
                    "not_found_error",
                    message=f"Model m not found for key {API_KEY}.",
                    code=404,
                ),
                faults.error_event(
                    "authentication_error",
                    message=f"Incorrect API key provided: {API_KEY}.",
                    code=401,
                ),
            ]
            for refusal in refusals:
                heard = len(fake.requests)
                fake.inject(refusal, times=1)
                await exposure.failure(client.complete(PROMPT))
                assert len(fake.requests) == heard + 1
            fake.inject(
                faults.error_event("api_error", after_chunks=1, quote_prompt=True),
                times=1,
            )
            streamed = await client.stream(PROMPT)
            assert streamed.error is not None
            exposure.told(streamed.error)
            health = await client.call(
                "GetProviderHealth", llm_pb.GetProviderHealthRequest(route="chat")
            )
            exposure.shown(str(health))

            # Requests refused before any provider hears them.
            too_long = [user(PROMPT * 20_000)]
            await exposure.failure(
                client.call(
                    "Complete", llm_pb.CompleteRequest(route="chat", messages=too_long)
                )
            )
            await exposure.failure(
                client.call(
                    "Complete",
                    llm_pb.CompleteRequest(
                        route="chat",
                        messages=[llm_pb.Message(role=99, content=PROMPT)],  # type: ignore[arg-type]
                    ),
                )
            )
            await exposure.failure(
                client.call(
                    "Complete",
                    llm_pb.CompleteRequest(
                        route="no-such-route", messages=[user(PROMPT)]
                    ),
                )
            )

    exposure.assert_hides([API_KEY, *PROMPT_WORDS], fragment=100)
