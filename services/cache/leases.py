"""Fill leases granted by one replica alone: the embedded mode, and the
fallback while the shared tier is unreachable."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

_TOKEN = re.compile(r"([A-Za-z0-9_-]{1,64})\.([0-9a-f]{16})\.(\d{1,18})\.(L|R\d{1,18})")


@dataclass(frozen=True, slots=True)
class LeaseToken:
    """A parsed lease token: `<replica>.<random>.<local seq>.<L | R<shared seq>>`."""

    replica_id: str
    local_seq: int
    shared: bool
    text: str


def parse_token(text: str) -> LeaseToken | None:
    match = _TOKEN.fullmatch(text)
    if match is None:
        return None
    replica, _, local_seq, kind = match.groups()
    return LeaseToken(replica, int(local_seq), kind.startswith("R"), text)


def token_stem(replica_id: str, local_seq: int) -> str:
    """The start of a shared-tier token; Redis appends its invalidation seq."""
    return f"{replica_id}.{secrets.token_hex(8)}.{local_seq}.R"


class LocalLeases:
    """At most one live lease per entry id, each expiring after the timeout."""

    def __init__(self, replica_id: str, timeout_s: float) -> None:
        self._replica_id = replica_id
        self._timeout_s = timeout_s
        self._held: dict[str, tuple[str, float]] = {}

    def acquire(self, entry_id: str, local_seq: int) -> tuple[str | None, int]:
        """(token, timeout ms) when granted, else (None, ms the holder keeps it)."""
        now = time.monotonic()
        held = self._held.get(entry_id)
        if held is not None and held[1] > now:
            return None, int((held[1] - now) * 1000)
        if len(self._held) > 100_000:
            self._held = {k: v for k, v in self._held.items() if v[1] > now}
        token = f"{self._replica_id}.{secrets.token_hex(8)}.{local_seq}.L"
        self._held[entry_id] = (token, now + self._timeout_s)
        return token, int(self._timeout_s * 1000)

    def release(self, entry_id: str, token: str) -> bool:
        """True when `token` is the live lease of `entry_id`; the lease ends."""
        held = self._held.get(entry_id)
        if held is None or held[0] != token or held[1] <= time.monotonic():
            return False
        del self._held[entry_id]
        return True

    def drop(self, entry_id: str) -> None:
        self._held.pop(entry_id, None)
