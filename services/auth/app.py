"""Assembly of the auth service: store, keyring, tokens, API keys, servicer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from empire.auth.v1 import auth_service_pb2_grpc as pb_grpc
from services.auth.api_keys import ApiKeyManager
from services.auth.denylist import Denylist
from services.auth.jwks_http import jwks_routes, revocation_routes
from services.auth.keyring import KeyringPolicy, SigningKeyRing
from services.auth.maintenance import Maintenance
from services.auth.master_key_rotation import adopt_current_master_key
from services.auth.refresh import RefreshFamilies, RefreshPolicy
from services.auth.revocation import TokenRevoker
from services.auth.secrets_box import MasterKey
from services.auth.servicer import AuthComponents, AuthServicer
from services.auth.settings import AuthSettings
from services.auth.store import AuthStore
from services.auth.tokens import TokenMinter
from services.auth.verification import KeyringTokenVerifier, TokenChecker
from shared.master_key import development_master_key
from shared.server import Service

logger = logging.getLogger(__name__)

SERVICE_NAME = "empire.auth.v1.AuthService"


async def create_service(
    settings: AuthSettings, *, keyring_clock: Callable[[], float] = time.time
) -> Service:
    """The auth `Service`; `keyring_clock` lets tests move key lifecycles in time.

    Maintenance follows the same clock, so a test can also move its pruning.
    """
    master_key = MasterKey(
        settings.master_key or development_master_key(settings.dev_master_key_file),
        settings.accepted_master_keys,
    )
    store = await AuthStore.open(
        settings.database_url, settings.database_timeout_seconds
    )
    try:
        await adopt_current_master_key(store, master_key, int(keyring_clock() * 1000))
        components = await _assemble(settings, store, master_key, keyring_clock)
        await _bootstrap_admin(settings, components.api_keys)
    except BaseException:
        await store.close()
        raise
    components.maintenance.start()

    async def close() -> None:
        await components.maintenance.stop()
        await store.close()

    return Service(
        name="auth",
        servicers=[
            (pb_grpc.add_AuthServiceServicer_to_server, AuthServicer(components))
        ],
        service_names=[SERVICE_NAME],
        http_routes=[
            *jwks_routes(components.keyring, settings.jwks_max_age_seconds),
            *revocation_routes(components.denylist),
        ],
        on_close=close,
        token_verifier=KeyringTokenVerifier(components.checker),
    )


async def _assemble(
    settings: AuthSettings,
    store: AuthStore,
    master_key: MasterKey,
    keyring_clock: Callable[[], float],
) -> AuthComponents:
    keyring = SigningKeyRing(
        store,
        master_key,
        KeyringPolicy(
            algorithm=settings.key_algorithm,
            jwks_max_age_seconds=settings.jwks_max_age_seconds,
            retire_after_seconds=settings.max_token_ttl_seconds
            + settings.sync_interval_seconds
            + settings.leeway_seconds,
            rotation_interval_seconds=settings.key_rotation_interval_seconds,
            sync_interval_seconds=settings.sync_interval_seconds,
        ),
        clock=keyring_clock,
    )
    await keyring.start()
    denylist = Denylist(leeway_seconds=settings.leeway_seconds)
    await denylist.sync(store)

    minter = TokenMinter(keyring, settings.issuer)
    checker = TokenChecker(
        keyring,
        denylist,
        issuer=settings.issuer,
        audience=settings.audience,
        leeway_seconds=settings.leeway_seconds,
    )
    refresh = RefreshFamilies(
        store,
        master_key,
        minter,
        denylist,
        RefreshPolicy(
            token_ttl_seconds=settings.refresh_token_ttl_seconds,
            family_max_age_seconds=settings.refresh_family_max_age_seconds,
            reuse_grace_seconds=settings.refresh_reuse_grace_seconds,
            access_token_ttl_seconds=settings.default_token_ttl_seconds,
        ),
    )
    api_keys = ApiKeyManager(
        store,
        master_key,
        minter,
        denylist,
        exchange_ttl_seconds=settings.exchange_token_ttl_seconds,
        role_scopes=settings.roles,
    )
    maintenance = Maintenance(
        store,
        keyring,
        denylist,
        master_key,
        interval_seconds=settings.sync_interval_seconds,
        leeway_seconds=settings.leeway_seconds,
        clock=keyring_clock,
    )
    return AuthComponents(
        settings=settings,
        store=store,
        keyring=keyring,
        minter=minter,
        checker=checker,
        refresh=refresh,
        revoker=TokenRevoker(store, checker, denylist),
        api_keys=api_keys,
        denylist=denylist,
        maintenance=maintenance,
    )


async def _bootstrap_admin(settings: AuthSettings, api_keys: ApiKeyManager) -> None:
    if settings.bootstrap_api_key is not None:
        await api_keys.install_bootstrap(settings.bootstrap_api_key)
    elif settings.development:
        await api_keys.create_development_bootstrap()
    else:
        logger.warning(
            "no EMPIRE_AUTH_BOOTSTRAP_API_KEY: no admin credential is created"
        )
