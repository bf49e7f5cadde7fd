"""Prints each figure beside its baseline and the ratio between them."""

from __future__ import annotations

from bench.loadgen import Result


class Report:
    def __init__(self) -> None:
        self.ceiling: Result | None = None
        self.rows: list[tuple[str, Result, Result | None, str]] = []
        print(
            f"{'figure':<52} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8}"
            f"   {'baseline':<28} {'ratio':>7}"
        )

    def row(
        self,
        name: str,
        result: Result,
        baseline: Result | None = None,
        *,
        baseline_name: str = "echo ceiling",
        note: str = "",
    ) -> None:
        """Print `result`; with a baseline, its throughput ratio to it."""
        self.rows.append((name, result, baseline, note))
        ratio = ""
        if baseline is not None and baseline.rps:
            ratio = f"{result.rps / baseline.rps:6.0%}"
        errors = f"  ({result.errors} errors)" if result.errors else ""
        label = baseline_name if baseline is not None else ""
        print(
            f"{name:<52} {result.rps:>9.0f} {result.p50_ms:>8.3f} {result.p99_ms:>8.3f}"
            f"   {label:<28} {ratio:>7}{errors}" + (f"  {note}" if note else ""),
            flush=True,
        )

    def latency_row(
        self, name: str, result: Result, baseline: Result, *, baseline_name: str
    ) -> None:
        """Print an added-latency figure: this minus the baseline, at p50 and p99."""
        added_p50 = result.p50_ms - baseline.p50_ms
        added_p99 = result.p99_ms - baseline.p99_ms
        print(
            f"{name:<52} added p50 {added_p50:.3f} ms, p99 {added_p99:.3f} ms"
            f" over {baseline_name} (p50 {baseline.p50_ms:.3f} ms)",
            flush=True,
        )
