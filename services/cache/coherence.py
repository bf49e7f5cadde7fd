"""What replicas tell each other, and the recent history each replica keeps of it.

Every store and invalidation is published on one Redis channel. A replica
applies the messages to its in-process tier and keeps the latest ones in a
`CoherenceLog`, which answers two questions: may a value read before some
message arrived still be put into the in-process tier, and has a lease this
replica granted been voided by an invalidation since.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

SEPARATOR = "\x1f"
KIND_KEY = "key"
KIND_PREFIX = "prefix"
KIND_ROUTE = "route"
KIND_TAG = "tag"


@dataclass(frozen=True, slots=True)
class Selector:
    """The entries one invalidation reaches."""

    kind: str
    route_id: str
    arg: str
    soft: bool = False

    def matches(self, route_id: str, key: str, tags: tuple[str, ...]) -> bool:
        if self.kind == KIND_TAG:
            return self.arg in tags
        if route_id != self.route_id:
            return False
        if self.kind == KIND_KEY:
            return key == self.arg
        if self.kind == KIND_PREFIX:
            return key.startswith(self.arg)
        return True


@dataclass(frozen=True, slots=True)
class Stored:
    """A replica stored a new version of an entry; older copies must go."""

    entry_id: str
    version: int


@dataclass(frozen=True, slots=True)
class StoredMany:
    """A bulk load stored `keys` (no vary) under versions first, first + 1, ..."""

    route_id: str
    first_version: int
    keys: tuple[str, ...]

    def each(self) -> list[Stored]:
        return [
            Stored(entry_id(self.route_id, key, ""), self.first_version + offset)
            for offset, key in enumerate(self.keys)
        ]


@dataclass(frozen=True, slots=True)
class ConfigChanged:
    route_id: str


@dataclass(frozen=True, slots=True)
class Invalidated:
    """An invalidation its origin waits to hear acknowledged (under `ack_id`)."""

    selector: Selector
    ack_id: str


@dataclass(frozen=True, slots=True)
class Acknowledged:
    ack_id: str


Event = Invalidated | Stored | StoredMany | ConfigChanged | Acknowledged


def encode_invalidation(origin: str, ack_id: str, selector: Selector) -> str:
    soft = "1" if selector.soft else "0"
    return SEPARATOR.join(
        ("I", origin, ack_id, selector.kind, soft, selector.route_id, selector.arg)
    )


def encode_ack(origin: str, ack_id: str) -> str:
    return SEPARATOR.join(("A", origin, ack_id))


def encode_config_change(origin: str, route_id: str) -> str:
    return SEPARATOR.join(("C", origin, route_id))


def decode(message: str) -> tuple[str, Event] | None:
    """(origin replica, event), or None for a message this version cannot read."""
    kind, _, rest = message.partition(SEPARATOR)
    if kind == "I":
        parts = rest.split(SEPARATOR, 5)
        if len(parts) == 6:
            origin, ack_id, selector_kind, soft, route_id, arg = parts
            selector = Selector(selector_kind, route_id, arg, soft == "1")
            return origin, Invalidated(selector, ack_id)
    elif kind == "A":
        origin, _, ack_id = rest.partition(SEPARATOR)
        return origin, Acknowledged(ack_id)
    elif kind == "S":
        parts = rest.split(SEPARATOR, 2)
        if len(parts) == 3 and parts[1].isdecimal():
            return parts[0], Stored(parts[2], int(parts[1]))
    elif kind == "M":
        parts = rest.split(SEPARATOR, 3)
        if len(parts) == 4 and parts[1].isdecimal():
            origin, first, route_id, keys = parts
            return origin, StoredMany(route_id, int(first), tuple(keys.split("\x1e")))
    elif kind == "C":
        origin, _, route_id = rest.partition(SEPARATOR)
        return origin, ConfigChanged(route_id)
    return None


def entry_id(route_id: str, key: str, variant: str) -> str:
    return SEPARATOR.join((route_id, key, variant))


class CoherenceLog:
    """The last events a replica applied, numbered in the order it applied them."""

    def __init__(self, capacity: int) -> None:
        self.seq = 0
        self._events: deque[tuple[int, Selector | Stored]] = deque(maxlen=capacity)

    def append(self, event: Selector | Stored) -> int:
        self.seq += 1
        self._events.append((self.seq, event))
        return self.seq

    def _since(self, seq: int) -> list[tuple[int, Selector | Stored]] | None:
        """Events after `seq`, or None when some of them were already dropped."""
        if seq >= self.seq:
            return []
        if not self._events or self._events[0][0] > seq + 1:
            return None
        return [item for item in self._events if item[0] > seq]

    def may_insert(
        self,
        since: int,
        ident: str,
        route_id: str,
        key: str,
        tags: tuple[str, ...],
        version: int,
    ) -> bool:
        """False when an event after `since` supersedes a value read at `since`."""
        events = self._since(since)
        if events is None:
            return False
        for _, event in events:
            if isinstance(event, Stored):
                if event.entry_id == ident and event.version > version:
                    return False
            elif event.matches(route_id, key, tags):
                return False
        return True

    def voids(self, since: int, route_id: str, key: str, tags: tuple[str, ...]) -> bool:
        """True when an invalidation after `since` reaches the entry (or may have)."""
        events = self._since(since)
        if events is None:
            return True
        return any(
            isinstance(event, Selector) and event.matches(route_id, key, tags)
            for _, event in events
        )
