"""Plain numbers to protobuf time messages and back."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from shared.proto_time import duration, epoch_ms, timestamp


def test_timestamp_keeps_milliseconds() -> None:
    stamp = timestamp(1_700_000_000_123)

    assert (stamp.seconds, stamp.nanos) == (1_700_000_000, 123_000_000)
    assert epoch_ms(stamp) == 1_700_000_000_123


def test_missing_time_stays_an_unset_field() -> None:
    assert timestamp(None) is None


def test_epoch_ms_reads_a_timestamp() -> None:
    stamp = timestamp_pb2.Timestamp(seconds=2, nanos=5_000_000)

    assert epoch_ms(stamp) == 2005


def test_duration_keeps_fractions_of_a_second() -> None:
    value = duration(1.25)

    assert (value.seconds, value.nanos) == (1, 250_000_000)
