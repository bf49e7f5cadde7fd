"""Builds the vault service for the shared server bootstrap."""

from __future__ import annotations

from empire.vault.v1 import vault_service_pb2_grpc
from services.vault.runtime import VaultRuntime, open_runtime
from services.vault.servicer import VaultServicer
from services.vault.settings import VaultSettings
from shared.server import Service

SERVICE_NAME = "empire.vault.v1.VaultService"


async def create_service(settings: VaultSettings) -> Service:
    return service_for(await open_runtime(settings))


def service_for(runtime: VaultRuntime) -> Service:
    """The service over an opened runtime, which it closes when it stops."""
    return Service(
        name="vault",
        servicers=[
            (
                vault_service_pb2_grpc.add_VaultServiceServicer_to_server,
                VaultServicer(runtime),
            )
        ],
        service_names=[SERVICE_NAME],
        on_close=runtime.close,
    )
