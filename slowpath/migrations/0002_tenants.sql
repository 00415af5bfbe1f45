-- Tenants (seed 002) for operators without etcd: the JSON record the
-- tenants API took (normalized, token filled in), keyed by its frp token.
-- Portable as 0001: TEXT and BIGINT only, timestamps as unix ms.

CREATE TABLE tenants (
    token TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
