"""The `empire.auth.v1.AuthService` servicer: validates, delegates, converts."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from empire.auth.v1 import auth_service_pb2 as pb
from empire.auth.v1 import auth_service_pb2_grpc as pb_grpc
from services.auth import messages, validation
from services.auth.api_keys import ApiKeyManager, NewApiKey
from services.auth.denylist import Denylist
from services.auth.keyring import SigningKeyRing
from services.auth.maintenance import Maintenance
from services.auth.refresh import RefreshFamilies
from services.auth.revocation import TokenRevoker
from services.auth.scopes import expand_roles, require_grantable, validate_scopes
from services.auth.settings import AuthSettings
from services.auth.store import AuthStore
from services.auth.tokens import TOKEN_TYPE, Grant, TokenMinter
from services.auth.verification import TokenChecker
from shared.authn import current_principal
from shared.errors import InvalidArgument
from shared.proto_time import timestamp

logger = logging.getLogger(__name__)


@dataclass
class AuthComponents:
    """The domain objects the servicer delegates to."""

    settings: AuthSettings
    store: AuthStore
    keyring: SigningKeyRing
    minter: TokenMinter
    checker: TokenChecker
    refresh: RefreshFamilies
    revoker: TokenRevoker
    api_keys: ApiKeyManager
    denylist: Denylist
    maintenance: Maintenance


class AuthServicer(pb_grpc.AuthServiceServicer):
    def __init__(self, components: AuthComponents) -> None:
        self.components = components
        self._settings = components.settings
        self._responses = messages.VerifyResponses()

    async def IssueToken(self, request: pb.IssueTokenRequest, context: Any) -> Any:
        grant = self._grant_for(request)
        if request.include_refresh_token:
            result = await self.components.refresh.start(grant)
            minted = result.access
            refresh_token, refresh_expires = (
                result.refresh_token,
                result.refresh_expires_ms,
            )
        else:
            minted = await self.components.minter.issue(grant, self.components.store)
            refresh_token, refresh_expires = "", None
        return pb.IssueTokenResponse(
            access_token=minted.token,
            token_type=TOKEN_TYPE,
            expire_time=timestamp(minted.expires_ms),
            token_id=minted.token_id,
            key_id=minted.key_id,
            scopes=minted.scopes,
            refresh_token=refresh_token,
            refresh_token_expire_time=timestamp(refresh_expires),
        )

    async def VerifyToken(self, request: pb.VerifyTokenRequest, context: Any) -> Any:
        if not request.token:
            raise InvalidArgument("token", "required")
        audience = validation.check_audience(
            request.audience, self._settings.allowed_audiences, ""
        )
        verdict = await self.components.checker.check(request.token, audience)
        return self._responses.response_for(verdict)

    async def RefreshToken(self, request: pb.RefreshTokenRequest, context: Any) -> Any:
        token = validation.require_credential(request.refresh_token, "refresh_token")
        result = await self.components.refresh.rotate(token)
        return pb.RefreshTokenResponse(
            access_token=result.access.token,
            token_type=TOKEN_TYPE,
            expire_time=timestamp(result.access.expires_ms),
            token_id=result.access.token_id,
            scopes=result.access.scopes,
            refresh_token=result.refresh_token,
            refresh_token_expire_time=timestamp(result.refresh_expires_ms),
        )

    async def RevokeToken(self, request: pb.RevokeTokenRequest, context: Any) -> Any:
        target = request.WhichOneof("target")
        if target == "access_token":
            token = validation.require_credential(
                request.access_token,
                "access_token",
                validation.MAX_ACCESS_TOKEN_CHARS,
            )
            token_id = await self.components.revoker.revoke_token(token)
            return pb.RevokeTokenResponse(revoked_token_ids=[token_id])
        if target == "token_id":
            token_id = validation.require_text(request.token_id, "token_id", 128)
            await self.components.revoker.revoke_token_id(token_id)
            return pb.RevokeTokenResponse(revoked_token_ids=[token_id])
        if target == "refresh_token":
            token = validation.require_credential(
                request.refresh_token, "refresh_token"
            )
            family_id, revoked = await self.components.refresh.revoke(token)
            return pb.RevokeTokenResponse(
                revoked_token_ids=revoked, refresh_family_id=family_id
            )
        raise InvalidArgument(
            "target", "set one of access_token, token_id or refresh_token"
        )

    async def GetJwks(self, request: pb.GetJwksRequest, context: Any) -> Any:
        response = pb.GetJwksResponse(
            keys=[
                messages.json_web_key(k) for k in self.components.keyring.jwks()["keys"]
            ]
        )
        response.cache_max_age.seconds = self._settings.jwks_max_age_seconds
        return response

    async def RotateSigningKey(
        self, request: pb.RotateSigningKeyRequest, context: Any
    ) -> Any:
        algorithm = None
        if request.algorithm != pb.SIGNING_ALGORITHM_UNSPECIFIED:
            algorithm = messages.ALGORITHM_NAMES.get(request.algorithm)
            if algorithm is None:
                raise InvalidArgument("algorithm", "not a known signing algorithm")
        principal = current_principal()
        rotation = await self.components.keyring.rotate(algorithm, force=request.force)
        logger.info(
            "signing keys rotated by %s (forced: %s)", principal.subject, request.force
        )
        return pb.RotateSigningKeyResponse(
            current_key=messages.signing_key(rotation.current),
            next_key=messages.signing_key(rotation.next),
            previous_key=messages.signing_key(rotation.previous),
        )

    async def ListSigningKeys(
        self, request: pb.ListSigningKeysRequest, context: Any
    ) -> Any:
        size = validation.page_size(request.page_size)
        filters = [request.show_retired]
        cursor = validation.decode_page_token(
            request.page_token, "signing_keys", filters
        )
        keys = [
            key
            for key in self.components.keyring.keys()
            if request.show_retired or key.state.value != "retired"
        ]
        if cursor is not None:
            keys = [k for k in keys if (k.created_ms, k.key_id) < cursor]
        page = keys[:size]
        next_token = ""
        if len(keys) > size:
            next_token = validation.encode_page_token(
                "signing_keys", filters, page[-1].created_ms, page[-1].key_id
            )
        return pb.ListSigningKeysResponse(
            signing_keys=[messages.signing_key(key) for key in page],
            next_page_token=next_token,
        )

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: Any) -> Any:
        display_name = validation.check_text(
            request.display_name, "display_name", validation.MAX_DISPLAY_NAME_CHARS
        )
        subject = validation.require_text(
            request.subject, "subject", validation.MAX_SUBJECT_CHARS
        )
        scopes = self._grantable_scopes(request.scopes, request.roles)
        ttl = None
        if request.HasField("ttl"):
            ttl = validation.ttl_seconds(request.ttl, True, 0, 60, 10 * 365 * 86400)
        row, secret = await self.components.api_keys.create(
            NewApiKey(
                display_name=display_name,
                subject=subject,
                scopes=scopes,
                roles=tuple(request.roles),
                creator=current_principal().subject,
                ttl_seconds=ttl,
            )
        )
        return pb.CreateApiKeyResponse(api_key=messages.api_key(row), secret=secret)

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: Any) -> Any:
        size = validation.page_size(request.page_size)
        filters = [request.show_inactive]
        cursor = validation.decode_page_token(request.page_token, "api_keys", filters)
        rows = await self.components.store.list_api_keys(
            size + 1, cursor, request.show_inactive, self._now_ms()
        )
        page = rows[:size]
        next_token = ""
        if len(rows) > size:
            next_token = validation.encode_page_token(
                "api_keys", filters, page[-1].created_ms, page[-1].api_key_id
            )
        return pb.ListApiKeysResponse(
            api_keys=[messages.api_key(row) for row in page], next_page_token=next_token
        )

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: Any) -> Any:
        api_key_id = validation.require_text(request.api_key_id, "api_key_id", 64)
        row = await self.components.api_keys.revoke(api_key_id)
        return pb.RevokeApiKeyResponse(api_key=messages.api_key(row))

    async def ExchangeApiKey(
        self, request: pb.ExchangeApiKeyRequest, context: Any
    ) -> Any:
        secret = validation.require_credential(request.api_key, "api_key")
        validate_scopes(request.scopes)
        audience = validation.check_audience(
            request.audience, self._settings.allowed_audiences, self._settings.audience
        )
        minted = await self.components.api_keys.exchange(
            secret, frozenset(request.scopes), audience
        )
        return pb.ExchangeApiKeyResponse(
            access_token=minted.token,
            token_type=TOKEN_TYPE,
            expire_time=timestamp(minted.expires_ms),
            token_id=minted.token_id,
            scopes=minted.scopes,
        )

    def _grant_for(self, request: pb.IssueTokenRequest) -> Grant:
        subject = validation.require_text(
            request.subject, "subject", validation.MAX_SUBJECT_CHARS
        )
        scopes = self._grantable_scopes(request.scopes, request.roles)
        settings = self._settings
        return Grant(
            subject=subject,
            scopes=scopes,
            roles=tuple(request.roles),
            audience=validation.check_audience(
                request.audience, settings.allowed_audiences, settings.audience
            ),
            ttl_seconds=validation.ttl_seconds(
                request.ttl,
                request.HasField("ttl"),
                settings.default_token_ttl_seconds,
                settings.min_token_ttl_seconds,
                settings.max_token_ttl_seconds,
            ),
            extra_claims=validation.extra_claims(request.claims),
        )

    def _grantable_scopes(self, scopes: Any, roles: Any) -> frozenset[str]:
        """The scopes asked for, roles expanded, refused if wider than the caller's."""
        validate_scopes(scopes)
        if len(roles) > 16:
            raise InvalidArgument("roles", "at most 16 roles")
        granted = expand_roles(scopes, roles, self._settings.roles)
        require_grantable(current_principal().scopes, granted)
        return granted

    def _now_ms(self) -> int:
        return int(time.time() * 1000)
