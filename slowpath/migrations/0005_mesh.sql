-- Seed 003's mesh controller (issue 15): its tables (§9.2), named mesh_*
-- beside seed 001's nodes, under the portability rules of 0001 (TEXT and
-- BIGINT only, booleans 0/1, times as unix ms, ids chosen by the slowpath:
-- small integers, since DATA frames carry node ids in 4 bytes). Mesh audit
-- rows go to the existing audit table.

CREATE TABLE mesh_networks (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    subnet TEXT NOT NULL,
    description TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);

CREATE TABLE mesh_nodes (
    id BIGINT PRIMARY KEY,
    network_id BIGINT NOT NULL REFERENCES mesh_networks (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    machine_key_pub TEXT NOT NULL UNIQUE,
    node_key_pub TEXT NOT NULL,
    node_key_updated_ms BIGINT NOT NULL,
    -- '' until the node is authorized (an address is given then).
    virtual_ip TEXT NOT NULL,
    hostname TEXT NOT NULL,
    os TEXT NOT NULL,
    arch TEXT NOT NULL,
    version TEXT NOT NULL,
    nat_type TEXT NOT NULL,
    online BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    authorized BIGINT NOT NULL,
    -- The newest timestamp (unix ms) a message signed by the machine key
    -- carried: a signed message is taken once, and only if newer.
    last_signed_ms BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);

CREATE INDEX mesh_nodes_network ON mesh_nodes (network_id);
CREATE UNIQUE INDEX mesh_nodes_ip ON mesh_nodes (network_id, virtual_ip) WHERE virtual_ip <> '';

CREATE TABLE mesh_node_endpoints (
    node_id BIGINT NOT NULL REFERENCES mesh_nodes (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    ip TEXT NOT NULL,
    port BIGINT NOT NULL,
    priority BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (node_id, kind, ip, port)
);

CREATE TABLE mesh_node_routes (
    id BIGINT PRIMARY KEY,
    node_id BIGINT NOT NULL REFERENCES mesh_nodes (id) ON DELETE CASCADE,
    cidr TEXT NOT NULL,
    priority BIGINT NOT NULL,
    weight BIGINT NOT NULL,
    enabled BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    UNIQUE (node_id, cidr)
);

-- Relay and STUN servers. The server token is stored hashed; `token_jti`
-- is the live one's id (blacklisted when regenerated).
CREATE TABLE mesh_servers (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    url TEXT NOT NULL,
    region TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    stun_ip TEXT NOT NULL,
    stun_ip2 TEXT NOT NULL,
    stun_port BIGINT NOT NULL,
    enabled BIGINT NOT NULL,
    token_jti TEXT NOT NULL,
    last_heartbeat_ms BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE mesh_latency_records (
    src_type TEXT NOT NULL,
    src_id BIGINT NOT NULL,
    dst_type TEXT NOT NULL,
    dst_id BIGINT NOT NULL,
    rtt_ms BIGINT NOT NULL,
    recorded_ms BIGINT NOT NULL,
    PRIMARY KEY (src_type, src_id, dst_type, dst_id)
);

CREATE TABLE mesh_token_blacklist (
    jti TEXT PRIMARY KEY,
    node_id BIGINT NOT NULL,
    reason TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);

-- Tokens issued to nodes and not yet expired, so that deauthorizing or
-- deleting a node can blacklist every one of them.
CREATE TABLE mesh_issued_tokens (
    jti TEXT PRIMARY KEY,
    node_id BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);

CREATE INDEX mesh_issued_tokens_node ON mesh_issued_tokens (node_id);

CREATE TABLE mesh_node_server_connections (
    node_id BIGINT NOT NULL REFERENCES mesh_nodes (id) ON DELETE CASCADE,
    server_id BIGINT NOT NULL REFERENCES mesh_servers (id) ON DELETE CASCADE,
    connected_ms BIGINT NOT NULL,
    last_ping_ms BIGINT NOT NULL,
    PRIMARY KEY (node_id, server_id)
);

-- Id counters: ids are never reused (relays and peers key caches by them).
CREATE TABLE mesh_counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);

CREATE TABLE mesh_settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);

-- The seed's defaults, and require_authorization (new nodes wait for an
-- operator). No jwt_secret row: tokens are Ed25519-signed unless an HS256
-- secret is configured.
INSERT INTO mesh_settings (key, value, updated_ms) VALUES
    ('auth_token_expire_hours', '24', 0),
    ('relay_token_expire_hours', '1.5', 0),
    ('node_key_rotate_hours', '24', 0),
    ('keepalive_interval_seconds', '25', 0),
    ('require_authorization', 'true', 0);

-- The seed's default network.
INSERT INTO mesh_networks (id, name, subnet, description, created_ms, updated_ms)
VALUES (1, 'default', '10.0.1.0/24', '', 0, 0);
