"""Prometheus metrics every server records for every RPC."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RPC_TOTAL = Counter(
    "empire_rpc_total",
    "RPCs handled, by service, method and status code.",
    ["service", "method", "code"],
)
RPC_SECONDS = Histogram(
    "empire_rpc_duration_seconds",
    "Time spent handling an RPC, by service and method.",
    ["service", "method"],
    buckets=(
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
    ),
)
