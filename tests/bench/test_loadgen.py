"""How figures and their baselines are taken in turns, and how rows print them."""

from __future__ import annotations

import pytest

import bench.loadgen
from bench.bench_echo import CEILING, RUNTIME, running_echoes
from bench.loadgen import Result, alternate
from bench.report import Report


@pytest.fixture(autouse=True)
def short_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.loadgen, "SCALE", 0.05)


async def test_alternate_takes_turns_and_counts_errors_apart() -> None:
    order: list[str] = []

    async def first() -> None:
        order.append("first")

    async def second() -> None:
        order.append("second")
        if len(order) % 2:
            raise RuntimeError("some calls fail")

    async def third() -> None:
        order.append("third")

    results = await alternate(
        {"first": first, "second": second, "third": third}, concurrency=2, slices=3
    )

    assert results["first"].calls > 0 and results["first"].errors == 0
    assert results["second"].calls > 0 and results["second"].errors > 0
    assert results["third"].calls > 0 and results["third"].errors == 0
    # A warm-up turn each, then three slices each: eleven changes of side.
    turns = sum(1 for a, b in zip(order, order[1:], strict=False) if a != b)
    assert turns == 11
    # Warm-up calls are made but not timed.
    assert results["first"].calls < order.count("first")


async def test_alternate_keeps_every_timed_latency() -> None:
    async def call() -> None:
        return None

    result = (await alternate({"only": call}, concurrency=1, slices=2))["only"]

    assert len(result.latencies) == result.calls > 0
    assert result.p50_ms == pytest.approx(
        sorted(result.latencies)[result.calls // 2] * 1000
    )


async def test_echoes_are_measured_beside_the_figure() -> None:
    async with running_echoes() as echoes:
        results = await echoes.beside({"figure": echoes.ceiling}, runtime=True)

    assert set(results) == {"figure", CEILING, RUNTIME}
    assert all(r.calls > 0 and r.errors == 0 for r in results.values())


def test_a_row_prints_its_ratio_to_the_baseline_and_the_ceiling_it_saw(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = Report(None)  # type: ignore[arg-type]
    ceiling = Result(calls=2000, errors=0, seconds=2.0, p50_ms=1.0, p99_ms=2.0)
    figure = Result(calls=500, errors=3, seconds=2.0, p50_ms=4.0, p99_ms=8.0)

    report.row("some figure", figure, ceiling)

    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("some figure")
    assert "echo ceiling 1000 rps" in row
    assert "25%" in row
    assert "(3 errors)" in row
