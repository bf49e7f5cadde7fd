"""Domain records into `empire.auth.v1` messages."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from google.protobuf import struct_pb2

from empire.auth.v1 import auth_service_pb2 as pb
from services.auth.signing_keys import KeyState, SigningKey
from services.auth.store import ApiKeyRow
from services.auth.verification import Verdict
from shared.proto_time import timestamp

_KEY_STATES = {
    KeyState.NEXT: pb.SigningKey.NEXT,
    KeyState.CURRENT: pb.SigningKey.CURRENT,
    KeyState.RETIRING: pb.SigningKey.RETIRING,
    KeyState.RETIRED: pb.SigningKey.RETIRED,
}
ALGORITHMS = {"EdDSA": pb.EDDSA, "ES256": pb.ES256, "RS256": pb.RS256}
ALGORITHM_NAMES = {value: name for name, value in ALGORITHMS.items()}
_JWK_FIELDS = ("kty", "kid", "alg", "use", "crv", "x", "y", "n", "e")


def json_web_key(jwk: dict[str, Any]) -> pb.JsonWebKey:
    return pb.JsonWebKey(
        **{name: str(jwk[name]) for name in _JWK_FIELDS if name in jwk}
    )


def signing_key(key: SigningKey) -> pb.SigningKey:
    return pb.SigningKey(
        key_id=key.key_id,
        algorithm=ALGORITHMS[key.algorithm],
        state=_KEY_STATES[key.state],
        create_time=timestamp(key.created_ms),
        activate_time=timestamp(key.activated_ms),
        deactivate_time=timestamp(key.deactivated_ms),
        retire_time=timestamp(key.retire_ms),
        public_key=json_web_key(key.public_jwk),
    )


def api_key(row: ApiKeyRow) -> pb.ApiKey:
    return pb.ApiKey(
        api_key_id=row.api_key_id,
        display_name=row.display_name,
        subject=row.subject,
        scopes=row.scopes,
        roles=row.roles,
        state=_api_key_state(row),
        create_time=timestamp(row.created_ms),
        expire_time=timestamp(row.expires_ms),
        revoke_time=timestamp(row.revoked_ms),
        creator=row.creator,
    )


def _api_key_state(row: ApiKeyRow) -> Any:
    if row.revoked_ms is not None:
        return pb.ApiKey.REVOKED
    if row.expires_ms is not None and row.expires_ms <= time.time() * 1000:
        return pb.ApiKey.EXPIRED
    return pb.ApiKey.ACTIVE


class VerifyResponses:
    """Builds VerifyToken answers, reusing the one built for a remembered verdict.

    The checker hands back the same `Verdict` object for a token it verified
    before and that is still valid, so its answer need not be rebuilt.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._built: OrderedDict[int, tuple[Verdict, pb.VerifyTokenResponse]] = (
            OrderedDict()
        )

    def response_for(self, verdict: Verdict) -> pb.VerifyTokenResponse:
        if not verdict.valid:
            return verify_response(verdict)
        built = self._built.get(id(verdict))
        if built is not None and built[0] is verdict:
            return built[1]
        response = verify_response(verdict)
        self._built[id(verdict)] = (verdict, response)
        if len(self._built) > self._size:
            self._built.popitem(last=False)
        return response


def verify_response(verdict: Verdict) -> pb.VerifyTokenResponse:
    if not verdict.valid:
        return pb.VerifyTokenResponse(valid=False, reason=verdict.reason)
    claims = verdict.claims
    struct = struct_pb2.Struct()
    struct.update(claims)
    scope, roles = claims.get("scope", ""), claims.get("roles", [])
    return pb.VerifyTokenResponse(
        valid=True,
        claims=struct,
        subject=str(claims["sub"]),
        scopes=scope.split() if isinstance(scope, str) else [],
        roles=[str(role) for role in roles] if isinstance(roles, list) else [],
        token_id=verdict.token_id,
        key_id=verdict.key_id,
        expire_time=timestamp(int(claims["exp"]) * 1000),
        issue_time=timestamp(int(claims["iat"]) * 1000),
    )
