"""The llm bench's own rows: the service's added latency, with no LiteLLM in them."""

from __future__ import annotations

import pytest

import bench.loadgen
from bench import bench_llm
from bench.bench_echo import running_echoes
from bench.report import Report


async def test_llm_rows_give_added_latency_in_both_shapes_without_litellm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench.loadgen, "SCALE", 0.05)

    async with running_echoes() as echoes:
        await bench_llm.run(Report(echoes))

    out = capsys.readouterr().out
    for shape in ("in process", "own process"):
        for kind in ("plain", "streamed"):
            line = next(
                line
                for line in out.splitlines()
                if f"llm service ({shape}) added latency, {kind}" in line
            )
            assert "over direct openai SDK" in line
    assert "LiteLLM" not in out
    assert "errors)" not in out
