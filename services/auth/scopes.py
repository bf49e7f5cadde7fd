"""Scopes and roles: what a token may do, and what a caller may grant.

A scope is `noun:verb` (`secrets:read`), optionally qualified by a resource
prefix (`secrets:read:llm/`); `*` is every scope. A caller can grant only
scopes it holds itself, or narrower qualifications of them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence

from shared.errors import InvalidArgument, PermissionDenied

ALL_SCOPES = "*"
MAX_SCOPES = 64
_SCOPE = re.compile(
    r"^[a-z][a-z0-9_-]{0,31}:[a-z][a-z0-9_-]{0,31}(:[A-Za-z0-9_./-]{1,128})?$"
)


def validate_scopes(scopes: Sequence[str], field: str = "scopes") -> None:
    if len(scopes) > MAX_SCOPES:
        raise InvalidArgument(field, f"at most {MAX_SCOPES} scopes")
    for index, scope in enumerate(scopes):
        if scope != ALL_SCOPES and not _SCOPE.match(scope):
            raise InvalidArgument(
                f"{field}[{index}]",
                "a scope is '*' or 'noun:verb', optionally ':qualifier'",
            )


def expand_roles(
    scopes: Iterable[str],
    roles: Sequence[str],
    role_scopes: Mapping[str, frozenset[str]],
    field: str = "roles",
) -> frozenset[str]:
    """The scopes granted by `scopes` plus those of `roles`; unknown roles refused."""
    granted = set(scopes)
    for index, role in enumerate(roles):
        if role not in role_scopes:
            raise InvalidArgument(f"{field}[{index}]", "not a configured role")
        granted |= role_scopes[role]
    if ALL_SCOPES in granted:
        return frozenset({ALL_SCOPES})
    return frozenset(granted)


def covers(held: str, requested: str) -> bool:
    """True if holding `held` lets one grant `requested`."""
    if held == ALL_SCOPES or held == requested:
        return True
    if requested == ALL_SCOPES:
        return False
    held_base, held_qualifier = _split(held)
    requested_base, requested_qualifier = _split(requested)
    if held_base != requested_base:
        return False
    if held_qualifier is None:
        return True
    return requested_qualifier is not None and requested_qualifier.startswith(
        held_qualifier
    )


def require_grantable(held: Collection[str], requested: Iterable[str]) -> None:
    """Refuse (PERMISSION_DENIED) a grant wider than what the caller holds."""
    for scope in sorted(requested):
        if not any(covers(own, scope) for own in held):
            raise PermissionDenied(
                "the caller cannot grant a scope it does not hold",
                reason="SCOPE_EXCEEDS_CALLER",
                metadata={"scope": scope},
            )


def _split(scope: str) -> tuple[str, str | None]:
    noun, _, rest = scope.partition(":")
    verb, separator, qualifier = rest.partition(":")
    return f"{noun}:{verb}", qualifier if separator else None
