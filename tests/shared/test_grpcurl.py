"""An operator's view: a real grpcurl lists and calls a service through reflection."""

from __future__ import annotations

from shared.echo import echo_service
from tests.harness.grpcurl import grpcurl, grpcurl_json
from tests.harness.servers import serve, test_server_settings
from tests.harness.tokens import LocalIssuer


async def test_grpcurl_lists_services_and_calls_them(issuer: LocalIssuer) -> None:
    async with serve(
        echo_service(), test_server_settings("auth"), issuer.verifier()
    ) as running:
        code, listing, _ = await grpcurl("-plaintext", running.target, "list")
        assert code == 0
        assert set(listing.split()) >= {
            "empire.echo.v1.EchoService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }

        health = await grpcurl_json(running.target, "grpc.health.v1.Health/Check", {})
        assert health == {"status": "SERVING"}

        token = issuer.token(["echo:call"], subject="operator")
        reply = await grpcurl_json(
            running.target,
            "empire.echo.v1.EchoService/Echo",
            {"message": "hello"},
            f"authorization: Bearer {token}",
        )
        assert reply == {"message": "hello", "caller": "operator"}


async def test_grpcurl_without_token_sees_unauthenticated(issuer: LocalIssuer) -> None:
    async with serve(
        echo_service(), test_server_settings("auth"), issuer.verifier()
    ) as running:
        code, _, err = await grpcurl(
            "-plaintext",
            "-d",
            '{"message": "x"}',
            running.target,
            "empire.echo.v1.EchoService/Echo",
        )
    assert code != 0
    assert "Unauthenticated" in err
