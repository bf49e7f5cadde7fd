-- Signing keys: public half in the clear, private half sealed under the master key.
CREATE TABLE signing_keys (
    key_id TEXT PRIMARY KEY,
    algorithm TEXT NOT NULL,
    state TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    sealed_private_key BLOB,
    created_ms BIGINT NOT NULL,
    activated_ms BIGINT,
    deactivated_ms BIGINT,
    retire_ms BIGINT
);

-- One row whose version every lifecycle change bumps (compare-and-set), so
-- replicas rotating at once cannot both promote a key.
CREATE TABLE keyring_version (
    id INTEGER PRIMARY KEY,
    version BIGINT NOT NULL
);

INSERT INTO keyring_version (id, version) VALUES (1, 0);

-- Every access token issued, until it expires: revocation by id and by family
-- or API key needs to know what exists and when it ends.
CREATE TABLE issued_tokens (
    token_id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    key_id TEXT NOT NULL,
    family_id TEXT,
    api_key_id TEXT,
    issued_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);

CREATE INDEX issued_tokens_expires ON issued_tokens (expires_ms);
CREATE INDEX issued_tokens_family ON issued_tokens (family_id);
CREATE INDEX issued_tokens_api_key ON issued_tokens (api_key_id);

-- The denylist; a row goes once the token it names has expired.
CREATE TABLE revoked_tokens (
    token_id TEXT PRIMARY KEY,
    expires_ms BIGINT NOT NULL,
    revoked_ms BIGINT NOT NULL
);

CREATE INDEX revoked_tokens_revoked ON revoked_tokens (revoked_ms);
CREATE INDEX revoked_tokens_expires ON revoked_tokens (expires_ms);

CREATE TABLE refresh_families (
    family_id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    scopes TEXT NOT NULL,
    roles TEXT NOT NULL,
    audience TEXT NOT NULL,
    claims TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);

CREATE INDEX refresh_families_expires ON refresh_families (expires_ms);

-- Refresh tokens are stored only as keyed hashes.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id TEXT NOT NULL REFERENCES refresh_families (family_id) ON DELETE CASCADE,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    used_ms BIGINT
);

CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- API keys are stored only as keyed hashes, found by their short id.
CREATE TABLE api_keys (
    api_key_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    display_name TEXT NOT NULL,
    subject TEXT NOT NULL,
    scopes TEXT NOT NULL,
    roles TEXT NOT NULL,
    creator TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT,
    revoked_ms BIGINT
);

CREATE INDEX api_keys_created ON api_keys (created_ms, api_key_id);
