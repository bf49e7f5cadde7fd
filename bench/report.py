"""Prints each figure beside its baseline and the ratio between them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.loadgen import Result

if TYPE_CHECKING:
    from bench.bench_echo import Echoes

NAME_WIDTH = 52
CEILING_NAME = "echo ceiling"


class Report:
    def __init__(self, echoes: Echoes) -> None:
        # The echo servers every module interleaves its headline figures with.
        self.echoes = echoes
        print(
            f"{'figure':<{NAME_WIDTH}} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8}"
            f"   {'baseline (same slices)':<28} {'ratio':>7}",
            flush=True,
        )

    def row(
        self,
        name: str,
        result: Result,
        baseline: Result | None = None,
        *,
        baseline_name: str = CEILING_NAME,
        note: str = "",
    ) -> None:
        """Print `result`; with a baseline, its throughput ratio to it.

        Against the ceiling the baseline column also says what the ceiling
        measured in those slices, since it drifts through a run.
        """
        ratio = label = ""
        if baseline is not None:
            label = baseline_name
            if baseline_name == CEILING_NAME:
                label = f"{CEILING_NAME} {baseline.rps:.0f} rps"
            if baseline.rps:
                ratio = f"{result.rps / baseline.rps:6.0%}"
        errors = f"  ({result.errors} errors)" if result.errors else ""
        line = (
            f"{name:<{NAME_WIDTH}} {result.rps:>9.0f} {result.p50_ms:>8.3f}"
            f" {result.p99_ms:>8.3f}   {label:<28} {ratio:>7}{errors}"
            + (f"  {note}" if note else "")
        )
        print(line.rstrip(), flush=True)

    def latency_row(
        self, name: str, result: Result, baseline: Result, *, baseline_name: str
    ) -> None:
        """Print an added-latency figure: this minus the baseline, at p50 and p99."""
        added_p50 = result.p50_ms - baseline.p50_ms
        added_p99 = result.p99_ms - baseline.p99_ms
        print(
            f"{name:<{NAME_WIDTH}} added p50 {added_p50:.3f} ms, p99 {added_p99:.3f} ms"
            f" over {baseline_name} (p50 {baseline.p50_ms:.3f} ms)",
            flush=True,
        )

    def line(self, name: str, text: str) -> None:
        """A row that is not a throughput figure (a hit ratio, a missing peer)."""
        print(f"{name:<{NAME_WIDTH}} {text}", flush=True)
