-- The vault's tables. No column ever holds a plaintext value or an unwrapped key.

-- The master keyring: each version's key, wrapped by the configured master key.
CREATE TABLE vault_master_keys (
    version INTEGER PRIMARY KEY,
    wrapped_key BLOB NOT NULL,
    create_time_ms BIGINT NOT NULL
);

CREATE TABLE vault_secrets (
    key_id TEXT PRIMARY KEY,
    secret_type INTEGER NOT NULL,
    labels TEXT NOT NULL,
    rotation_frequency_days INTEGER NOT NULL,
    current_version BIGINT NOT NULL,
    oldest_version BIGINT NOT NULL,
    create_time_ms BIGINT NOT NULL,
    update_time_ms BIGINT NOT NULL,
    -- The due time is stored so ListDueRotations is one indexed range scan.
    next_rotation_ms BIGINT,
    delete_time_ms BIGINT
);

CREATE INDEX vault_secrets_next_rotation ON vault_secrets (next_rotation_ms);

-- One row per version; a destroyed version keeps its row with both blobs NULL.
CREATE TABLE vault_versions (
    key_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    master_version INTEGER NOT NULL,
    wrapped_key BLOB,
    ciphertext BLOB,
    create_time_ms BIGINT NOT NULL,
    destroy_time_ms BIGINT,
    PRIMARY KEY (key_id, version)
);

CREATE INDEX vault_versions_master ON vault_versions (master_version);

CREATE TABLE vault_audit_events (
    sequence BIGINT PRIMARY KEY,
    time_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    key_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    outcome INTEGER NOT NULL,
    reason TEXT NOT NULL,
    value_hmac TEXT NOT NULL,
    previous_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

CREATE INDEX vault_audit_events_key_id ON vault_audit_events (key_id, sequence);

-- The head of the audit chain, moved in the same transaction as every append,
-- so deleting the newest events is detected too.
CREATE TABLE vault_audit_head (
    id INTEGER PRIMARY KEY,
    sequence BIGINT NOT NULL,
    hash TEXT NOT NULL
);
