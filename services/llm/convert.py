"""Domain values to the contract's messages."""

from __future__ import annotations

from typing import cast

from empire.llm.v1 import llm_service_pb2 as pb
from services.llm.circuit import CircuitState
from services.llm.health import ProviderHealth
from services.llm.models import (
    Completion,
    ErrorClass,
    FailedAttempt,
    Outcome,
    ProviderConfig,
)
from services.llm.usage import ProviderSummary, RouteSummary, latency_percentiles
from shared.proto_time import duration, timestamp

_KINDS = {
    "openai": pb.PROVIDER_KIND_OPENAI,
    "anthropic": pb.PROVIDER_KIND_ANTHROPIC,
    "openai_compatible": pb.PROVIDER_KIND_OPENAI_COMPATIBLE,
}
_FINISH = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
}
_CIRCUIT = {
    CircuitState.CLOSED: pb.CIRCUIT_STATE_CLOSED,
    CircuitState.OPEN: pb.CIRCUIT_STATE_OPEN,
    CircuitState.HALF_OPEN: pb.CIRCUIT_STATE_HALF_OPEN,
}


def error_class(value: ErrorClass | str | None) -> pb.ErrorClass:
    if value is None or value == "":
        return pb.ERROR_CLASS_UNSPECIFIED
    name = value.value if isinstance(value, ErrorClass) else value
    return cast(pb.ErrorClass, pb.ErrorClass.Value("ERROR_CLASS_" + name))


def provider(config: ProviderConfig) -> pb.Provider:
    return pb.Provider(
        provider_id=config.provider_id,
        kind=_KINDS[config.kind],
        endpoint=config.endpoint,
        model=config.model,
        route=config.route,
        priority=config.priority,
        weight=config.weight,
        api_key_id=config.api_key_id,
        context_window=config.context_window,
        request_timeout=duration(config.request_timeout_seconds),
        first_token_timeout=duration(config.first_token_timeout_seconds),
        stream_idle_timeout=duration(config.stream_idle_timeout_seconds),
        input_price_per_million=config.input_price_per_million,
        output_price_per_million=config.output_price_per_million,
        disabled=config.disabled,
        create_time=timestamp(config.create_time_ms),
        update_time=timestamp(config.update_time_ms),
    )


def attempt(failed: FailedAttempt) -> pb.Attempt:
    return pb.Attempt(
        provider_id=failed.provider_id,
        model=failed.model,
        error_class=error_class(failed.error_class),
        http_status=failed.http_status,
        message=failed.message,
        latency=duration(failed.latency_seconds),
    )


def usage(completion: Completion) -> pb.Usage:
    return pb.Usage(
        input_tokens=completion.input_tokens, output_tokens=completion.output_tokens
    )


def complete_response(outcome: Outcome) -> pb.CompleteResponse:
    return pb.CompleteResponse(
        request_id=outcome.request_id,
        provider_id=outcome.provider.provider_id,
        model=outcome.provider.model,
        content=outcome.completion.text,
        finish_reason=_FINISH.get(
            outcome.completion.finish_reason, pb.FINISH_REASON_UNSPECIFIED
        ),
        usage=usage(outcome.completion),
        cost_usd=outcome.cost_usd,
        cached=outcome.cached,
        failed_attempts=[attempt(a) for a in outcome.failed_attempts],
        latency=duration(outcome.latency_seconds),
    )


def stream_done(outcome: Outcome) -> pb.StreamDone:
    return pb.StreamDone(
        request_id=outcome.request_id,
        provider_id=outcome.provider.provider_id,
        model=outcome.provider.model,
        finish_reason=_FINISH.get(
            outcome.completion.finish_reason, pb.FINISH_REASON_UNSPECIFIED
        ),
        usage=usage(outcome.completion),
        cost_usd=outcome.cost_usd,
        failed_attempts=[attempt(a) for a in outcome.failed_attempts],
        latency=duration(outcome.latency_seconds),
        cached=outcome.cached,
    )


def provider_health(
    config: ProviderConfig,
    record: ProviderHealth,
    monotonic_now: float,
    wall_now: float,
) -> pb.ProviderHealth:
    attempts, failures = record.breaker.recent()
    message = pb.ProviderHealth(
        provider_id=config.provider_id,
        route=config.route,
        state=_CIRCUIT[record.state],
        error_rate=failures / attempts if attempts else 0.0,
        recent_attempts=attempts,
        consecutive_failures=record.breaker.consecutive_failures,
        latency_p50=duration(record.latency_percentile(0.5)),
        latency_p95=duration(record.latency_percentile(0.95)),
        latency_p99=duration(record.latency_percentile(0.99)),
        last_error_class=error_class(record.last_error_class),
        last_error=record.last_error,
        last_check_ok=record.last_check_ok,
    )
    if record.last_error_time:
        message.last_error_time.FromMilliseconds(int(record.last_error_time * 1000))
    if record.last_check_time:
        message.last_check_time.FromMilliseconds(int(record.last_check_time * 1000))
    probe = record.breaker.next_probe_time
    if probe is not None:
        at = wall_now + max(0.0, probe - monotonic_now)
        message.next_probe_time.FromMilliseconds(int(at * 1000))
    return message


def route_usage(summary: RouteSummary) -> pb.RouteUsage:
    p50, p99 = latency_percentiles(summary.latencies_ms)
    return pb.RouteUsage(
        route=summary.route,
        requests=summary.requests,
        succeeded=summary.succeeded,
        failed=summary.failed,
        cache_hits=summary.cache_hits,
        input_tokens=summary.input_tokens,
        output_tokens=summary.output_tokens,
        cost_usd=summary.cost_usd,
        latency_p50=duration(p50 / 1000),
        latency_p99=duration(p99 / 1000),
        attempt_failures=failure_counts(summary.attempt_failures),
    )


def provider_usage(summary: ProviderSummary) -> pb.ProviderUsage:
    p50, p99 = latency_percentiles(summary.latencies_ms)
    return pb.ProviderUsage(
        provider_id=summary.provider_id,
        route=summary.route,
        attempts=summary.attempts,
        successes=summary.successes,
        failures=failure_counts(summary.failures),
        input_tokens=summary.input_tokens,
        output_tokens=summary.output_tokens,
        cost_usd=summary.cost_usd,
        latency_p50=duration(p50 / 1000),
        latency_p99=duration(p99 / 1000),
    )


def failure_counts(counts: dict[str, int]) -> list[pb.FailureCount]:
    return [
        pb.FailureCount(error_class=error_class(name), count=count)
        for name, count in sorted(counts.items())
    ]
