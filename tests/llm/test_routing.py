"""Routing order: priority first, then weight, then the configured tie-breaker."""

from __future__ import annotations

import random
from collections import Counter

from services.llm.health import HealthBoard
from services.llm.models import ProviderConfig
from services.llm.router import ProviderRouter
from services.llm.settings import RouterPolicy
from tests.llm.harness import FAST_POLICY


class StaticRegistry:
    def __init__(self, providers: list[ProviderConfig]) -> None:
        self.providers = sorted(providers, key=lambda p: (p.priority, p.provider_id))

    def route(self, route: str) -> list[ProviderConfig]:
        return [p for p in self.providers if p.route == route]


def provider(provider_id: str, **fields: object) -> ProviderConfig:
    return ProviderConfig(
        provider_id=provider_id,
        kind="openai",
        endpoint="http://127.0.0.1:9/v1",
        model=provider_id,
        route="chat",
        **fields,  # type: ignore[arg-type]
    )


def router(
    providers: list[ProviderConfig], policy: RouterPolicy = FAST_POLICY
) -> ProviderRouter:
    return ProviderRouter(
        StaticRegistry(providers),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        HealthBoard(policy),
        None,  # type: ignore[arg-type]
        policy,
        rng=random.Random(7),
    )


def firsts(subject: ProviderRouter, draws: int = 4000) -> Counter[str]:
    return Counter(subject.plan("chat")[0].provider_id for _ in range(draws))


def test_priority_comes_before_weight() -> None:
    subject = router(
        [provider("low", priority=1, weight=100), provider("high", priority=0)]
    )
    assert [p.provider_id for p in subject.plan("chat")] == ["high", "low"]


def test_equal_priority_splits_traffic_by_weight() -> None:
    subject = router([provider("a", weight=3), provider("b", weight=1)])
    counts = firsts(subject)
    share = counts["a"] / sum(counts.values())
    assert 0.70 < share < 0.80  # 3:1


def test_latency_tie_breaker_orders_equal_weights_by_median_latency() -> None:
    policy = FAST_POLICY.__class__(**{**FAST_POLICY.__dict__, "tie_breaker": "latency"})
    subject = router([provider("slow"), provider("fast")], policy)
    for _ in range(5):
        for provider_id, latency in (("slow", 0.9), ("fast", 0.1)):
            breaker = subject.health.get(provider_id).breaker
            admission = breaker.try_acquire()
            assert admission is not None
            subject.health.record_success(provider_id, latency, admission)
    assert set(firsts(subject, 200)) == {"fast"}


def test_cost_tie_breaker_orders_equal_weights_by_price() -> None:
    policy = FAST_POLICY.__class__(**{**FAST_POLICY.__dict__, "tie_breaker": "cost"})
    subject = router(
        [
            provider("dear", input_price_per_million=5.0),
            provider("cheap", input_price_per_million=0.5),
        ],
        policy,
    )
    assert set(firsts(subject, 200)) == {"cheap"}


def test_tie_breaker_does_not_override_weights() -> None:
    policy = FAST_POLICY.__class__(**{**FAST_POLICY.__dict__, "tie_breaker": "cost"})
    subject = router(
        [
            provider("heavy-dear", weight=3, input_price_per_million=5.0),
            provider("light-cheap", weight=1, input_price_per_million=0.5),
        ],
        policy,
    )
    counts = firsts(subject)
    assert 0.70 < counts["heavy-dear"] / sum(counts.values()) < 0.80
