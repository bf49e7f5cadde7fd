"""Bad input is never INTERNAL: every RPC of every service, walked from its
descriptor, answers hostile requests with a status a caller can act on, and an
INVALID_ARGUMENT names the request field that was wrong.

Each test starts one service on SQLite, builds a valid request per RPC, and
sends the variants of `tests.contract.hostile` (the same ones every run: the
mixes are seeded by the method's name). The failures are collected and
reported together, so one run shows every RPC that still breaks.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from empire.auth.v1 import auth_service_pb2 as auth_pb
from empire.cache.v1 import cache_service_pb2 as cache_pb
from empire.llm.v1 import llm_service_pb2 as llm_pb
from empire.llm.v1 import llm_service_pb2_grpc as llm_grpc
from empire.vault.v1 import vault_service_pb2 as vault_pb
from empire.vault.v1 import vault_service_pb2_grpc as vault_grpc
from services.cache.app import create_service as create_cache
from services.llm.app import create_service as create_llm
from shared.clients import bearer
from shared.pagination import encode_page_token
from tests.auth.harness import auth_settings, running_auth
from tests.cache.conftest import cache_settings, route_config
from tests.contract.hostile import BYTES, variants
from tests.harness.fake_providers import FakeProvider
from tests.harness.grpc_errors import bad_request, error_info
from tests.harness.servers import serve
from tests.harness.tokens import LocalIssuer
from tests.llm.harness import llm_settings, seconds, user
from tests.vault.conftest import running_vault, vault_settings

# Generous: a loaded two-core machine, and requests of megabytes.
CALL_TIMEOUT = 30.0
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
TURNED_AWAY = {"UNAUTHENTICATED", "PERMISSION_DENIED"}
Metadata = Callable[[], Sequence[tuple[str, str]]]


@dataclass
class Sweep:
    """Sends every variant of every RPC of one service and keeps what broke."""

    service: ServiceDescriptor
    channel: grpc.aio.Channel
    metadata: Metadata
    baselines: dict[str, Message] = field(default_factory=dict)
    after: dict[str, Callable[[], Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    reached: Counter[str] = field(default_factory=Counter)

    async def run(self) -> None:
        for method in self.service.methods:
            if method.client_streaming:
                continue
            await self.check(method, self._baseline(method), "baseline")
            for variant in variants(method.input_type, seed=method.full_name):
                request = self._baseline(method)
                variant.mutate(request)
                await self.check(method, request, variant.label)

    async def forge_page_tokens(self) -> None:
        """Every listing gets tokens with its own kind and filters but a hostile
        position (the digest is no signature: anyone can compute it), and the
        tokens of every other listing."""
        listings = [m for m in self.service.methods if _is_listing(m)]
        tokens = {m.name: await self._second_page_token(m) for m in listings}
        for method in listings:
            kind, filters, position = _read_page_token(tokens[method.name])
            for index, hostile in enumerate(hostile_positions(position)):
                token = encode_page_token(hostile, kind=kind, filters=filters)
                await self._check_page_token(method, token, f"position#{index}")
            for other, token in tokens.items():
                if other != method.name:
                    await self._check_page_token(method, token, f"from {other}")

    async def _second_page_token(self, method: MethodDescriptor) -> str:
        request = self._baseline(method)
        request.page_size = 1
        unary = self.channel.unary_unary(
            f"/{self.service.full_name}/{method.name}",
            _serialize,
            GetMessageClass(method.output_type).FromString,
        )
        response = await unary(request, metadata=self.metadata(), timeout=CALL_TIMEOUT)
        # The test's setup must leave two items in every listing.
        assert response.next_page_token, method.name
        return str(response.next_page_token)

    async def _check_page_token(
        self, method: MethodDescriptor, token: str, label: str
    ) -> None:
        request = self._baseline(method)
        request.page_token = token
        await self.check(method, request, f"page_token {label}")

    def _baseline(self, method: MethodDescriptor) -> Message:
        request = GetMessageClass(method.input_type)()
        if method.name in self.baselines:
            request.CopyFrom(self.baselines[method.name])
        return request

    async def check(self, method: MethodDescriptor, request: Any, label: str) -> None:
        error = await self._call(method, request)
        code = "OK" if error is None else error.code().name
        self.codes[code] += 1
        self.reached[method.name] += code not in TURNED_AWAY
        if method.name in self.after:
            await self.after[method.name]()
        if error is not None:
            problem = problem_with(error, method)
            if problem is not None:
                self.failures.append(f"{method.name} {label[:160]}: {problem}")

    async def _call(
        self, method: MethodDescriptor, request: Any
    ) -> grpc.aio.AioRpcError | None:
        path = f"/{self.service.full_name}/{method.name}"
        serialize, metadata = _serialize, self.metadata()
        try:
            if method.client_streaming:
                call = self.channel.stream_unary(path, serialize, _ignore)
                await call(_aiter(request), metadata=metadata, timeout=CALL_TIMEOUT)
            elif method.server_streaming:
                stream = self.channel.unary_stream(path, serialize, _ignore)
                async for _ in stream(request, metadata=metadata, timeout=CALL_TIMEOUT):
                    pass
            else:
                unary = self.channel.unary_unary(path, serialize, _ignore)
                await unary(request, metadata=metadata, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            return error
        return None

    def assert_clean(self) -> None:
        report = "\n".join(self.failures)
        calls = sum(self.codes.values())
        assert not self.failures, f"{len(self.failures)} of {calls}:\n{report}"
        # A method the interceptor turned away was tested no further than it.
        for method in self.service.methods:
            assert self.reached[method.name] > 0, (method.name, self.codes)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _ignore(data: bytes) -> bytes:
    return data


async def _aiter(items: Sequence[Message]) -> AsyncIterator[Message]:
    for item in items:
        yield item


def _is_listing(method: MethodDescriptor) -> bool:
    return (
        "page_token" in method.input_type.fields_by_name
        and "next_page_token" in method.output_type.fields_by_name
    )


def _read_page_token(token: str) -> tuple[str, Any, Any]:
    """The kind, filters and position a page token holds (see
    `shared.pagination`: a digest, then JSON)."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    document = json.loads(raw[8:])
    return document["k"], document["f"], document["p"]


def hostile_positions(position: Any) -> list[Any]:
    """Positions of the wrong shape, and the real one with each part spoiled."""
    scalars: list[Any] = [
        None,
        True,
        -1,
        2**70,
        -(2**70),
        1e308,
        float("inf"),
        float("nan"),
        "",
        "x" * 100_000,
        "a\x00b",
        {},
    ]
    shapes: list[Any] = [*scalars, [], [[[[[]]]]], [None] * 3, [position] * 2]
    parts = position if isinstance(position, list) else [position]
    for index in range(len(parts)):
        for scalar in scalars:
            spoiled = list(parts)
            spoiled[index] = scalar
            shapes.append(spoiled if isinstance(position, list) else spoiled[0])
    return shapes


def _has_error_info(error: grpc.aio.AioRpcError) -> bool:
    """Whether the service answered (a deadline the client gave up has none)."""
    try:
        error_info(error)
    except AssertionError:
        return False
    return True


def problem_with(error: grpc.aio.AioRpcError, method: MethodDescriptor) -> str | None:
    """What is wrong with the status a hostile request got, or None."""
    code = error.code()
    if code in NEVER:
        return f"{code.name}: {error.details()}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and not _has_error_info(error):
        return f"no answer in {CALL_TIMEOUT:g}s: {error.details()}"
    if code != grpc.StatusCode.INVALID_ARGUMENT:
        return None
    try:
        violations = bad_request(error).field_violations
    except AssertionError:
        return f"INVALID_ARGUMENT without a BadRequest: {error.details()}"
    if not violations or not violations[0].field:
        return f"INVALID_ARGUMENT naming no field: {error.details()}"
    top = re.split(r"[.\[]", violations[0].field)[0]
    named = {*method.input_type.fields_by_name, *method.input_type.oneofs_by_name}
    if top not in named and top != "request":
        return f"INVALID_ARGUMENT naming {violations[0].field!r}, not a request field"
    return None


async def test_auth_answers_hostile_requests_without_internal(sqlite_url: str) -> None:
    async with running_auth(auth_settings(sqlite_url)) as auth:
        issued = await auth.issue("alice", scopes=["secrets:read"])
        refreshable = await auth.issue("alice", include_refresh_token=True)
        created = await auth.stub.CreateApiKey(
            auth_pb.CreateApiKeyRequest(
                display_name="k", subject="svc", scopes=["secrets:read"]
            ),
            metadata=auth.as_admin(),
        )
        channel = auth.server.channel()
        sweep = Sweep(
            auth_pb.DESCRIPTOR.services_by_name["AuthService"],
            channel,
            auth.as_admin,
            baselines={
                "IssueToken": auth_pb.IssueTokenRequest(
                    subject="alice", scopes=["secrets:read"]
                ),
                "VerifyToken": auth_pb.VerifyTokenRequest(token=issued.access_token),
                "RefreshToken": auth_pb.RefreshTokenRequest(
                    refresh_token=refreshable.refresh_token
                ),
                "CreateApiKey": auth_pb.CreateApiKeyRequest(
                    display_name="k", subject="svc", scopes=["secrets:read"]
                ),
                "ExchangeApiKey": auth_pb.ExchangeApiKeyRequest(api_key=created.secret),
            },
            # A forced rotation may retire the key the admin token names.
            after={"RotateSigningKey": auth.renew_admin_token},
        )
        try:
            await sweep.run()
            await sweep.forge_page_tokens()
        finally:
            await channel.close()

    sweep.assert_clean()


async def _restore_variants(
    sweep: Sweep, backup: list[vault_pb.BackupResponse]
) -> None:
    """Restore is the one client stream: spoil the stream as well as its chunks."""
    method = sweep.service.methods_by_name["Restore"]
    chunks = [vault_pb.RestoreRequest(data=part.data) for part in backup]
    streams: dict[str, list[vault_pb.RestoreRequest]] = {
        "no chunks": [],
        "one empty chunk": [vault_pb.RestoreRequest()],
        "truncated": chunks[:1] + [vault_pb.RestoreRequest(data=chunks[-1].data[:-7])],
        "trailing garbage": [*chunks, vault_pb.RestoreRequest(data=b"\x00garbage")],
        "many empty chunks": [vault_pb.RestoreRequest()] * 1000,
        "replace flag only": [vault_pb.RestoreRequest(replace_existing=True)],
    }
    for index, data in enumerate(BYTES):
        streams[f"bytes#{index}"] = [vault_pb.RestoreRequest(data=data)]
    for index, data in enumerate(BYTES):
        streams[f"backup then bytes#{index}"] = [
            *chunks,
            vault_pb.RestoreRequest(data=data),
        ]
    for label, stream in streams.items():
        await sweep.check(method, stream, label)
    for variant in variants(method.input_type, seed=method.full_name):
        request = vault_pb.RestoreRequest()
        variant.mutate(request)
        await sweep.check(method, [request, *chunks], f"first chunk {variant.label}")


async def test_vault_answers_hostile_requests_without_internal(
    sqlite_url: str, issuer: LocalIssuer
) -> None:
    settings = vault_settings(sqlite_url, b"k" * 32)
    async with running_vault(settings, issuer) as vault:
        await vault.client.put("contract/a", b"first", rotation_frequency_days=1)
        await vault.client.put("contract/a", b"second", rotation_frequency_days=1)
        await vault.client.put("contract/due", b"third", rotation_frequency_days=1)
        channel = grpc.aio.insecure_channel(vault.target)
        stub = vault_grpc.VaultServiceStub(channel)
        backup = [
            part
            async for part in stub.Backup(
                vault_pb.BackupRequest(), metadata=vault.client.metadata()
            )
        ]
        sweep = Sweep(
            vault_pb.DESCRIPTOR.services_by_name["VaultService"],
            channel,
            vault.client.metadata,
            baselines={
                "PutSecret": vault_pb.PutSecretRequest(
                    key_id="contract/b", value=b"v", labels={"team": "a"}
                ),
                "GetSecret": vault_pb.GetSecretRequest(key_id="contract/a"),
                "RotateSecret": vault_pb.RotateSecretRequest(
                    key_id="contract/a", value=b"v"
                ),
                "ListDueRotations": vault_pb.ListDueRotationsRequest(within_days=30),
                "DestroySecretVersions": vault_pb.DestroySecretVersionsRequest(
                    key_id="contract/a", versions=[1]
                ),
            },
        )
        try:
            await sweep.run()
            await sweep.forge_page_tokens()
            await _restore_variants(sweep, backup)
        finally:
            await channel.close()

    sweep.assert_clean()


async def test_cache_answers_hostile_requests_without_internal(
    sqlite_url: str, issuer: LocalIssuer
) -> None:
    settings = cache_settings(sqlite_url)
    service = await create_cache(settings)
    async with serve(service, settings.server, issuer.verifier()) as server:
        channel = server.channel()
        token = issuer.token(scopes=["*"])
        sweep = Sweep(
            cache_pb.DESCRIPTOR.services_by_name["CacheService"],
            channel,
            lambda: (bearer(token),),
            baselines={
                "PutRouteConfig": cache_pb.PutRouteConfigRequest(
                    route_config=route_config("contract", vary_on=["accept"])
                ),
                "GetRouteConfig": cache_pb.GetRouteConfigRequest(route_id="api_offers"),
                "Lookup": cache_pb.LookupRequest(
                    route_id="api_offers", key="k", vary={"accept": "json"}
                ),
                "Store": cache_pb.StoreRequest(
                    route_id="api_offers", key="k", value=b"v", tags=["t"]
                ),
                "Invalidate": cache_pb.InvalidateRequest(
                    route_id="api_offers", key="k"
                ),
            },
        )
        unary = channel.unary_unary(
            "/empire.cache.v1.CacheService/PutRouteConfig",
            _serialize,
            _ignore,
        )
        put = cache_pb.PutRouteConfigRequest(route_config=route_config())
        try:
            await unary(put, metadata=sweep.metadata(), timeout=CALL_TIMEOUT)
            await sweep.run()
            await sweep.forge_page_tokens()
        finally:
            await channel.close()

    sweep.assert_clean()


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    async with FakeProvider("openai", model="contract-model") as fake:
        yield fake


def _llm_provider(provider_id: str, route: str, fake: FakeProvider) -> llm_pb.Provider:
    return llm_pb.Provider(
        provider_id=provider_id,
        kind=llm_pb.PROVIDER_KIND_OPENAI,
        endpoint=fake.base_url,
        model=fake.model,
        route=route,
        request_timeout=seconds(5),
        first_token_timeout=seconds(5),
        stream_idle_timeout=seconds(5),
    )


async def test_llm_answers_hostile_requests_without_internal(
    sqlite_url: str, issuer: LocalIssuer, provider: FakeProvider
) -> None:
    settings = llm_settings(sqlite_url)
    service = await create_llm(settings, environ={})
    async with serve(service, settings.server, issuer.verifier()) as server:
        channel = server.channel()
        token = issuer.token(scopes=["*"])
        stub = llm_grpc.LlmServiceStub(channel)
        await stub.PutProvider(
            llm_pb.PutProviderRequest(
                provider=_llm_provider("contract", "chat", provider)
            ),
            metadata=(bearer(token),),
        )
        sweep = Sweep(
            llm_pb.DESCRIPTOR.services_by_name["LlmService"],
            channel,
            lambda: (bearer(token),),
            baselines={
                # Its own id and route, so that spoiling it leaves "chat" alone.
                "PutProvider": llm_pb.PutProviderRequest(
                    provider=_llm_provider("spoiled", "spoiled", provider)
                ),
                "GetProvider": llm_pb.GetProviderRequest(provider_id="contract"),
                "Complete": llm_pb.CompleteRequest(
                    route="chat", messages=[user("hello")]
                ),
                "StreamComplete": llm_pb.StreamCompleteRequest(
                    route="chat", messages=[user("hello")]
                ),
                "GetProviderHealth": llm_pb.GetProviderHealthRequest(route="chat"),
                "GetUsage": llm_pb.GetUsageRequest(route="chat"),
            },
        )
        try:
            await sweep.run()
            await sweep.forge_page_tokens()
        finally:
            await channel.close()

    sweep.assert_clean()
