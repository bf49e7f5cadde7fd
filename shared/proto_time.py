"""Conversions between the services' plain numbers and protobuf time messages."""

from __future__ import annotations

from typing import overload

from google.protobuf import duration_pb2, timestamp_pb2


@overload
def timestamp(epoch_ms: int) -> timestamp_pb2.Timestamp: ...


@overload
def timestamp(epoch_ms: None) -> None: ...


@overload
def timestamp(epoch_ms: int | None) -> timestamp_pb2.Timestamp | None: ...


def timestamp(epoch_ms: int | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp for epoch milliseconds; None (an unset field) for None."""
    if epoch_ms is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(epoch_ms)
    return stamp


def epoch_ms(stamp: timestamp_pb2.Timestamp) -> int:
    return int(stamp.ToMilliseconds())


def duration(seconds: float) -> duration_pb2.Duration:
    """A Duration for (fractional) seconds, to the nanosecond."""
    result = duration_pb2.Duration()
    result.FromNanoseconds(int(seconds * 1e9))
    return result
