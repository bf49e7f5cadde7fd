"""Rows that only the peer comparison prints: a missing peer, and ours/theirs."""

from __future__ import annotations

from bench.loadgen import Result

NAME_WIDTH = 52


def unavailable(name: str, why: str) -> None:
    """A peer's row without a number: it could not be installed or started."""
    print(f"{name:<{NAME_WIDTH}} peer unavailable: {why}", flush=True)


def latency_ratio(name: str, ours: Result, theirs: Result, peer: str) -> None:
    """Our latency as a share of the peer's, at p50 and p99."""
    print(
        f"{name:<{NAME_WIDTH}} p50 {_share(ours.p50_ms, theirs.p50_ms)},"
        f" p99 {_share(ours.p99_ms, theirs.p99_ms)} of {peer}'s",
        flush=True,
    )


def added_ratio(
    name: str,
    ours: tuple[Result, Result],
    theirs: tuple[Result, Result],
    peer: str,
) -> None:
    """Latency each adds over its own direct baseline, ours as a share of theirs.

    Each pair is (baseline, through); the baselines were taken in the same
    process as the figure they are subtracted from.
    """
    ours_p50 = ours[1].p50_ms - ours[0].p50_ms
    ours_p99 = ours[1].p99_ms - ours[0].p99_ms
    theirs_p50 = theirs[1].p50_ms - theirs[0].p50_ms
    theirs_p99 = theirs[1].p99_ms - theirs[0].p99_ms
    print(
        f"{name:<{NAME_WIDTH}} added p50 {ours_p50:.3f} vs {theirs_p50:.3f} ms"
        f" ({_share(ours_p50, theirs_p50)}), p99 {ours_p99:.3f} vs"
        f" {theirs_p99:.3f} ms ({_share(ours_p99, theirs_p99)}) of {peer}'s",
        flush=True,
    )


def _share(ours: float, theirs: float) -> str:
    # A peer that added nothing (or less than noise) has no meaningful ratio.
    if theirs <= 0:
        return "n/a"
    return f"{ours / theirs:.0%}"
