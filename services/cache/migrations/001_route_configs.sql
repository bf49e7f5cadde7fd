-- Route configs of the cache service; `config` is the serialized RouteConfig.
CREATE TABLE cache_route_configs (
    route_id TEXT PRIMARY KEY,
    config BLOB NOT NULL,
    source INTEGER NOT NULL,
    update_time_ms BIGINT NOT NULL
);
