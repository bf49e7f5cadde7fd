-- The provider registry, and one row per request and per attempt for usage.
CREATE TABLE llm_providers (
    provider_id TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    kind TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    priority INTEGER NOT NULL,
    weight INTEGER NOT NULL,
    api_key_id TEXT NOT NULL,
    context_window INTEGER NOT NULL,
    request_timeout_ms BIGINT NOT NULL,
    first_token_timeout_ms BIGINT NOT NULL,
    stream_idle_timeout_ms BIGINT NOT NULL,
    input_price_per_million DOUBLE PRECISION NOT NULL,
    output_price_per_million DOUBLE PRECISION NOT NULL,
    disabled INTEGER NOT NULL,
    create_time_ms BIGINT NOT NULL,
    update_time_ms BIGINT NOT NULL
);

CREATE INDEX llm_providers_route ON llm_providers (route, priority, provider_id);

CREATE TABLE llm_requests (
    request_id TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    latency_ms DOUBLE PRECISION NOT NULL,
    ok INTEGER NOT NULL,
    error_reason TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    model TEXT NOT NULL,
    cached INTEGER NOT NULL,
    streamed INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL
);

CREATE INDEX llm_requests_time ON llm_requests (time_ms);

CREATE TABLE llm_attempts (
    request_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    route TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    model TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    latency_ms DOUBLE PRECISION NOT NULL,
    ok INTEGER NOT NULL,
    error_class TEXT NOT NULL,
    http_status INTEGER NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (request_id, attempt)
);

CREATE INDEX llm_attempts_time ON llm_attempts (time_ms);
