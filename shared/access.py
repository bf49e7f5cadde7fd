"""Access rules read from the contracts' `(empire.api.v1.access)` method option."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import descriptor_pool

from empire.api.v1 import access_pb2


@dataclass(frozen=True)
class MethodRule:
    """What the interceptor demands before a method runs."""

    scope: str
    public: bool
    # Whether a qualified form of `scope` passes: only where the service
    # itself checks the qualifier against the resource the request names.
    per_resource: bool = False


# A method whose contract forgot its rule is for admins only: fail closed.
ADMIN_ONLY = MethodRule(scope="*", public=False)


def rules_for_services(service_names: list[str]) -> dict[str, MethodRule]:
    """Rules keyed by full method path (`/empire.vault.v1.VaultService/GetSecret`).

    The services' generated modules must be imported first, so their
    descriptors are in the default pool.
    """
    pool = descriptor_pool.Default()
    rules: dict[str, MethodRule] = {}
    for service_name in service_names:
        service = pool.FindServiceByName(service_name)
        for method in service.methods:
            options = method.GetOptions()
            rule = ADMIN_ONLY
            if options.HasExtension(access_pb2.access):  # type: ignore[arg-type]
                declared = options.Extensions[access_pb2.access]  # type: ignore[index,var-annotated]
                rule = MethodRule(
                    scope=declared.scope,
                    public=declared.public,
                    per_resource=declared.per_resource,
                )
            rules[f"/{service_name}/{method.name}"] = rule
    return rules
