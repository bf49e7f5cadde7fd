"""Hostile variants of a request message, generated from its descriptor.

Each variant starts from a valid request and spoils one field (or, in the
seeded mixes, a few at once) with a value a careless or malicious caller might
send: empty, huge, control characters, out-of-range numbers, NaN, unknown enum
numbers, deep or huge Structs, oversized repeated fields, bogus page tokens.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

Mutation = Callable[[Message], None]

HUGE_TEXT = "x" * 100_000
CONTROL_TEXT = "a\x00b\x01\x07\x1b[31m\r\n\t\x7f"
ODD_UNICODE = "\u202e\ufeff\u200b\ufffd\uffff\U0010ffff\u0301e\U0001f4a5"
STRINGS = [
    "",
    " ",
    HUGE_TEXT,
    CONTROL_TEXT,
    ODD_UNICODE,
    "../../etc/passwd",
    "%s%n{0}${x}'\"; DROP TABLE t; --",
    "\U0001f4a5" * 5_000,
]
PAGE_TOKENS = ["bogus", "AAAA", "!!!!", "eyJ9", "=" * 40, HUGE_TEXT]
BYTES = [b"", b"\x00" * 100_000, bytes(range(256)) * 400, b"\xff\xfe"]
INT32 = [-1, -(2**31), 2**31 - 1]
INT64 = [-1, -(2**63), 2**63 - 1]
UINT32 = [2**32 - 1]
UINT64 = [2**64 - 1]
DOUBLES = [float("nan"), float("inf"), float("-inf"), -1.0, 1e308, 5e-324, -0.0]
UNKNOWN_ENUMS = [-1, 99, 2**31 - 1]
MANY = 10_000

_INTS = {
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_SINT32: INT32,
    FieldDescriptor.TYPE_SFIXED32: INT32,
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_SINT64: INT64,
    FieldDescriptor.TYPE_SFIXED64: INT64,
    FieldDescriptor.TYPE_UINT32: UINT32,
    FieldDescriptor.TYPE_FIXED32: UINT32,
    FieldDescriptor.TYPE_UINT64: UINT64,
    FieldDescriptor.TYPE_FIXED64: UINT64,
}


@dataclass(frozen=True)
class Variant:
    """One hostile request: a label for the failure report and how to build it."""

    label: str
    mutate: Mutation


def nested_struct(depth: int) -> struct_pb2.Struct:
    """A Struct `depth` levels deep: {"a": {"a": ... {"leaf": 1}}}."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"a": value}
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _structs() -> list[tuple[str, struct_pb2.Struct]]:
    nan = struct_pb2.Struct()
    nan.fields["n"].number_value = float("nan")
    inf = struct_pb2.Struct()
    inf.fields["n"].number_value = float("inf")
    return [
        ("empty", struct_pb2.Struct()),
        ("deep-30", nested_struct(30)),
        ("many-keys", _struct({f"k{i}": i for i in range(MANY)})),
        ("huge-key", _struct({HUGE_TEXT: 1})),
        ("huge-value", _struct({"k": HUGE_TEXT})),
        ("long-list", _struct({"k": list(range(MANY))})),
        ("nan", nan),
        ("inf", inf),
        ("control", _struct({CONTROL_TEXT: ODD_UNICODE})),
        ("reserved", _struct({"exp": "soon", "iss": 5, "sub": None, "aud": [1]})),
        ("reserved-2", _struct({"jti": {}, "scope": ["*"], "iat": -1, "kid": 2})),
    ]


def _durations() -> list[tuple[str, Message]]:
    cls = duration_pb2.Duration
    return [
        ("negative", cls(seconds=-1)),
        ("huge", cls(seconds=2**63 - 1)),
        ("max", cls(seconds=315_576_000_000)),
        ("nanos-negative", cls(nanos=-1)),
        ("nanos-overflow", cls(nanos=10**9)),
        ("signs-differ", cls(seconds=1, nanos=-1)),
    ]


def _timestamps() -> list[tuple[str, Message]]:
    cls = timestamp_pb2.Timestamp
    return [
        ("before-year-1", cls(seconds=-62_135_596_801)),
        ("huge", cls(seconds=2**63 - 1)),
        ("negative", cls(seconds=-1)),
        ("nanos-overflow", cls(seconds=1, nanos=2**31 - 1)),
        ("zero", cls()),
    ]


def _special_messages(field: FieldDescriptor) -> list[tuple[str, Message]] | None:
    """Hostile values of the well-known message types, or None for others."""
    makers = {
        "google.protobuf.Struct": _structs,
        "google.protobuf.Duration": _durations,
        "google.protobuf.Timestamp": _timestamps,
    }
    maker = makers.get(field.message_type.full_name)
    return None if maker is None else maker()


def scalar_values(field: FieldDescriptor) -> list[Any]:
    """The hostile values of one non-message field's type."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        if field.name.endswith("page_token"):
            return PAGE_TOKENS + STRINGS[3:5]
        return STRINGS
    if kind == FieldDescriptor.TYPE_BYTES:
        return BYTES
    if kind == FieldDescriptor.TYPE_BOOL:
        return [True, False]
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return DOUBLES
    if kind == FieldDescriptor.TYPE_ENUM:
        return [0, *UNKNOWN_ENUMS]
    return [0, *_INTS[kind]]


def _resolve(message: Message, path: tuple[str, ...]) -> Message:
    for name in path:
        message = getattr(message, name)
    return message


def _resolve_element(message: Message, path: tuple[str, ...]) -> Message:
    """The first element of the repeated message field at `path[-1]`, added if
    the baseline had none."""
    parent = _resolve(message, path[:-1])
    items = getattr(parent, path[-1])
    return items[0] if len(items) else items.add()


def _set(path: tuple[str, ...], name: str, value: Any, element: bool) -> Mutation:
    def mutate(message: Message) -> None:
        target = (_resolve_element if element else _resolve)(message, path)
        setattr(target, name, value)

    return mutate


def _replace_repeated(path: tuple[str, ...], name: str, values: list[Any]) -> Mutation:
    def mutate(message: Message) -> None:
        field = getattr(_resolve(message, path), name)
        del field[:]
        field.extend(values)

    return mutate


def _copy_message(path: tuple[str, ...], name: str, value: Message) -> Mutation:
    def mutate(message: Message) -> None:
        getattr(_resolve(message, path), name).CopyFrom(value)

    return mutate


def _replace_map(path: tuple[str, ...], name: str, values: dict[str, str]) -> Mutation:
    def mutate(message: Message) -> None:
        field = getattr(_resolve(message, path), name)
        field.clear()
        field.update(values)

    return mutate


def _clear(path: tuple[str, ...], name: str) -> Mutation:
    def mutate(message: Message) -> None:
        _resolve(message, path).ClearField(name)

    return mutate


def _many_elements(path: tuple[str, ...], name: str) -> Mutation:
    def mutate(message: Message) -> None:
        items = getattr(_resolve(message, path), name)
        template = items[0] if len(items) else type(items.add())()
        del items[:]
        for _ in range(MANY):
            items.add().CopyFrom(template)

    return mutate


def _map_variants(path: tuple[str, ...], field: FieldDescriptor) -> Iterator[Variant]:
    label = ".".join((*path, field.name))
    maps: list[tuple[str, dict[str, str]]] = [
        ("empty", {}),
        ("empty-entry", {"": ""}),
        ("huge-key", {HUGE_TEXT: "v"}),
        ("huge-value", {"k": HUGE_TEXT}),
        ("control", {CONTROL_TEXT: CONTROL_TEXT, ODD_UNICODE: ODD_UNICODE}),
        ("many", {f"k{i}": "v" for i in range(MANY)}),
    ]
    for name, values in maps:
        yield Variant(f"{label}={name}", _replace_map(path, field.name, values))


def _repeated_scalar_variants(
    path: tuple[str, ...], field: FieldDescriptor
) -> Iterator[Variant]:
    label = ".".join((*path, field.name))
    values = scalar_values(field)
    yield Variant(f"{label}=[]", _replace_repeated(path, field.name, []))
    # Many small elements: a huge message is refused before any servicer runs.
    small = {str: "x", bytes: b"x"}.get(type(values[0]), values[-1])
    many = [small] * MANY
    yield Variant(f"{label}=[x{MANY}]", _replace_repeated(path, field.name, many))
    for index, value in enumerate(values):
        yield Variant(
            f"{label}=[#{index}]", _replace_repeated(path, field.name, [value])
        )
    yield Variant(f"{label}=[all]", _replace_repeated(path, field.name, values))


def field_variants(
    descriptor: Descriptor, path: tuple[str, ...] = (), element: bool = False
) -> Iterator[Variant]:
    """Every single-field hostile variant of a message, walking into the
    project's own nested messages (and the first element of repeated ones)."""
    for field in descriptor.fields:
        label = ".".join((*path, field.name)) + ("[0]" if element else "")
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            yield from _map_variants(path, field)
        elif field.message_type is not None:
            yield from _message_variants(path, field, label, element)
        elif field.is_repeated:
            yield from _repeated_scalar_variants(path, field)
        else:
            for index, value in enumerate(scalar_values(field)):
                yield Variant(
                    f"{label}=#{index}", _set(path, field.name, value, element)
                )


def _message_variants(
    path: tuple[str, ...], field: FieldDescriptor, label: str, element: bool
) -> Iterator[Variant]:
    if field.is_repeated:
        yield Variant(f"{label}=[]", _replace_repeated(path, field.name, []))
        yield Variant(f"{label}=[x{MANY}]", _many_elements(path, field.name))
        yield from field_variants(field.message_type, (*path, field.name), True)
        return
    special = _special_messages(field)
    if not element:
        yield Variant(f"{label}=unset", _clear(path, field.name))
    if special is not None:
        for name, value in special:
            yield Variant(f"{label}={name}", _copy_message(path, field.name, value))
        return
    yield from field_variants(field.message_type, (*path, field.name))


def mixed_variants(descriptor: Descriptor, seed: str, count: int) -> Iterator[Variant]:
    """`count` seeded random requests spoiling two or three fields at once."""
    singles = list(field_variants(descriptor))
    if len(singles) < 2:
        return
    chooser = random.Random(seed)
    for index in range(count):
        picked = chooser.sample(singles, min(len(singles), chooser.randint(2, 3)))

        def mutate(message: Message, picked: list[Variant] = picked) -> None:
            for variant in picked:
                variant.mutate(message)

        labels = " + ".join(variant.label for variant in picked)
        yield Variant(f"mix#{index}: {labels}", mutate)


def variants(descriptor: Descriptor, seed: str, mixes: int = 40) -> list[Variant]:
    """The single-field variants, then the seeded mixes."""
    return [
        *field_variants(descriptor),
        *mixed_variants(descriptor, seed, mixes),
    ]
