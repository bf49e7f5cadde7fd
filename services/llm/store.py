"""The llm service's tables, on PostgreSQL or SQLite through `shared.db`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from services.llm.models import ProviderConfig
from shared.db import Database, Row, open_database

MIGRATIONS = Path(__file__).parent / "migrations"

_PROVIDER_COLUMNS = (
    "provider_id, route, kind, endpoint, model, priority, weight, api_key_id,"
    " context_window, request_timeout_ms, first_token_timeout_ms,"
    " stream_idle_timeout_ms, input_price_per_million, output_price_per_million,"
    " disabled, create_time_ms, update_time_ms"
)
_PUT_PROVIDER = (
    f"INSERT INTO llm_providers ({_PROVIDER_COLUMNS}) VALUES"
    " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (provider_id) DO UPDATE SET route = excluded.route,"
    " kind = excluded.kind, endpoint = excluded.endpoint, model = excluded.model,"
    " priority = excluded.priority, weight = excluded.weight,"
    " api_key_id = excluded.api_key_id, context_window = excluded.context_window,"
    " request_timeout_ms = excluded.request_timeout_ms,"
    " first_token_timeout_ms = excluded.first_token_timeout_ms,"
    " stream_idle_timeout_ms = excluded.stream_idle_timeout_ms,"
    " input_price_per_million = excluded.input_price_per_million,"
    " output_price_per_million = excluded.output_price_per_million,"
    " disabled = excluded.disabled, update_time_ms = excluded.update_time_ms"
)
_INSERT_REQUESTS = (
    "INSERT INTO llm_requests (request_id, route, time_ms, latency_ms, ok,"
    " error_reason, provider_id, model, cached, streamed, attempts, input_tokens,"
    " output_tokens, cost_usd) VALUES {rows}"
    " ON CONFLICT (request_id) DO NOTHING"
)
_INSERT_ATTEMPTS = (
    "INSERT INTO llm_attempts (request_id, attempt, route, provider_id, model,"
    " time_ms, latency_ms, ok, error_class, http_status, input_tokens,"
    " output_tokens, cost_usd) VALUES {rows}"
    " ON CONFLICT (request_id, attempt) DO NOTHING"
)
# Rows per INSERT statement: few round trips, well under SQLite's and
# PostgreSQL's limits on bound parameters.
ROWS_PER_STATEMENT = 500


@dataclass(frozen=True)
class RequestRecord:
    """One caller request, as usage counts it."""

    request_id: str
    route: str
    time_ms: int
    latency_ms: float
    ok: bool
    error_reason: str
    provider_id: str
    model: str
    cached: bool
    streamed: bool
    attempts: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt on one provider; failed ones carry their class and no cost."""

    request_id: str
    attempt: int
    route: str
    provider_id: str
    model: str
    time_ms: int
    latency_ms: float
    ok: bool
    error_class: str
    http_status: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


async def open_store(url: str) -> LlmStore:
    return LlmStore(await open_database(url, MIGRATIONS))


class LlmStore:
    """Every query the llm service makes."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def close(self) -> None:
        await self.db.close()

    async def put_provider(
        self, provider: ProviderConfig
    ) -> tuple[ProviderConfig, bool]:
        """Create or replace; answers the stored provider and whether it is new."""
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT create_time_ms FROM llm_providers WHERE provider_id = %s",
                (provider.provider_id,),
            )
            created = row is None
            if row is not None:
                provider = _replace_create_time(provider, int(row[0]))
            await tx.execute(_PUT_PROVIDER, _provider_params(provider))
        return provider, created

    async def get_provider(self, provider_id: str) -> ProviderConfig | None:
        row = await self.db.fetchone(
            f"SELECT {_PROVIDER_COLUMNS} FROM llm_providers WHERE provider_id = %s",
            (provider_id,),
        )
        return None if row is None else _provider_from_row(row)

    async def list_providers(self) -> list[ProviderConfig]:
        rows = await self.db.fetchall(
            f"SELECT {_PROVIDER_COLUMNS} FROM llm_providers"
            " ORDER BY route, priority, provider_id"
        )
        return [_provider_from_row(row) for row in rows]

    async def delete_provider(self, provider_id: str) -> bool:
        deleted = await self.db.execute(
            "DELETE FROM llm_providers WHERE provider_id = %s", (provider_id,)
        )
        return deleted > 0

    async def record(
        self, requests: Sequence[RequestRecord], attempts: Sequence[AttemptRecord]
    ) -> None:
        """Write a batch of usage rows in one transaction, many rows a statement."""
        batches = [
            (_INSERT_REQUESTS, [_request_params(r) for r in requests]),
            (_INSERT_ATTEMPTS, [_attempt_params(a) for a in attempts]),
        ]
        async with self.db.transaction() as tx:
            for template, rows in batches:
                for start in range(0, len(rows), ROWS_PER_STATEMENT):
                    chunk = rows[start : start + ROWS_PER_STATEMENT]
                    await tx.execute(*_multi_row(template, chunk))

    async def requests_between(
        self, start_ms: int, end_ms: int, route: str, provider_id: str
    ) -> list[RequestRecord]:
        rows = await self.db.fetchall(
            *_window(
                "SELECT request_id, route, time_ms, latency_ms, ok, error_reason,"
                " provider_id, model, cached, streamed, attempts, input_tokens,"
                " output_tokens, cost_usd FROM llm_requests",
                start_ms,
                end_ms,
                route,
                provider_id,
            )
        )
        return [_request_from_row(row) for row in rows]

    async def attempts_between(
        self, start_ms: int, end_ms: int, route: str, provider_id: str
    ) -> list[AttemptRecord]:
        rows = await self.db.fetchall(
            *_window(
                "SELECT request_id, attempt, route, provider_id, model, time_ms,"
                " latency_ms, ok, error_class, http_status, input_tokens,"
                " output_tokens, cost_usd FROM llm_attempts",
                start_ms,
                end_ms,
                route,
                provider_id,
            )
        )
        return [_attempt_from_row(row) for row in rows]

    async def attempt_failures_between(
        self, start_ms: int, end_ms: int, route: str, provider_id: str
    ) -> list[tuple[str, str, int]]:
        """Failed attempts per (route, error class), counted by the database."""
        sql, params = _window(
            "SELECT route, error_class, COUNT(*) FROM llm_attempts",
            start_ms,
            end_ms,
            route,
            provider_id,
        )
        rows = await self.db.fetchall(
            sql + " AND ok = 0 GROUP BY route, error_class", params
        )
        return [(str(row[0]), str(row[1]), int(row[2])) for row in rows]


def _window(
    select: str, start_ms: int, end_ms: int, route: str, provider_id: str
) -> tuple[str, tuple[object, ...]]:
    """`select` narrowed to [start_ms, end_ms) and, when given, a route and provider."""
    sql = select + " WHERE time_ms >= %s AND time_ms < %s"
    params: list[object] = [start_ms, end_ms]
    if route:
        sql += " AND route = %s"
        params.append(route)
    if provider_id:
        sql += " AND provider_id = %s"
        params.append(provider_id)
    return sql, tuple(params)


def _multi_row(
    template: str, rows: list[tuple[object, ...]]
) -> tuple[str, tuple[object, ...]]:
    placeholders = "(" + ", ".join(["%s"] * len(rows[0])) + ")"
    sql = template.format(rows=", ".join([placeholders] * len(rows)))
    return sql, tuple(value for row in rows for value in row)


def _provider_params(p: ProviderConfig) -> tuple[object, ...]:
    return (
        p.provider_id,
        p.route,
        p.kind,
        p.endpoint,
        p.model,
        p.priority,
        p.weight,
        p.api_key_id,
        p.context_window,
        round(p.request_timeout_seconds * 1000),
        round(p.first_token_timeout_seconds * 1000),
        round(p.stream_idle_timeout_seconds * 1000),
        p.input_price_per_million,
        p.output_price_per_million,
        int(p.disabled),
        p.create_time_ms,
        p.update_time_ms,
    )


def _provider_from_row(row: Row) -> ProviderConfig:
    return ProviderConfig(
        provider_id=row[0],
        route=row[1],
        kind=row[2],
        endpoint=row[3],
        model=row[4],
        priority=int(row[5]),
        weight=int(row[6]),
        api_key_id=row[7],
        context_window=int(row[8]),
        request_timeout_seconds=int(row[9]) / 1000,
        first_token_timeout_seconds=int(row[10]) / 1000,
        stream_idle_timeout_seconds=int(row[11]) / 1000,
        input_price_per_million=float(row[12]),
        output_price_per_million=float(row[13]),
        disabled=bool(row[14]),
        create_time_ms=int(row[15]),
        update_time_ms=int(row[16]),
    )


def _replace_create_time(
    provider: ProviderConfig, create_time_ms: int
) -> ProviderConfig:
    return replace(provider, create_time_ms=create_time_ms)


def _request_params(r: RequestRecord) -> tuple[object, ...]:
    return (
        r.request_id,
        r.route,
        r.time_ms,
        r.latency_ms,
        int(r.ok),
        r.error_reason,
        r.provider_id,
        r.model,
        int(r.cached),
        int(r.streamed),
        r.attempts,
        r.input_tokens,
        r.output_tokens,
        r.cost_usd,
    )


def _request_from_row(row: Row) -> RequestRecord:
    return RequestRecord(
        request_id=row[0],
        route=row[1],
        time_ms=int(row[2]),
        latency_ms=float(row[3]),
        ok=bool(row[4]),
        error_reason=row[5],
        provider_id=row[6],
        model=row[7],
        cached=bool(row[8]),
        streamed=bool(row[9]),
        attempts=int(row[10]),
        input_tokens=int(row[11]),
        output_tokens=int(row[12]),
        cost_usd=float(row[13]),
    )


def _attempt_params(a: AttemptRecord) -> tuple[object, ...]:
    return (
        a.request_id,
        a.attempt,
        a.route,
        a.provider_id,
        a.model,
        a.time_ms,
        a.latency_ms,
        int(a.ok),
        a.error_class,
        a.http_status,
        a.input_tokens,
        a.output_tokens,
        a.cost_usd,
    )


def _attempt_from_row(row: Row) -> AttemptRecord:
    return AttemptRecord(
        request_id=row[0],
        attempt=int(row[1]),
        route=row[2],
        provider_id=row[3],
        model=row[4],
        time_ms=int(row[5]),
        latency_ms=float(row[6]),
        ok=bool(row[7]),
        error_class=row[8],
        http_status=int(row[9]),
        input_tokens=int(row[10]),
        output_tokens=int(row[11]),
        cost_usd=float(row[12]),
    )
