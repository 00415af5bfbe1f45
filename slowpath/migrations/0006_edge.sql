-- The edge (seed 004, issue 16): origins, hostname routes, edge nodes that
-- pull their configuration, and the certificates obtained by ACME. Same
-- portability rules as 0001 (TEXT and BIGINT, unix ms).

-- An origin: an address the edge reaches (seed 004's WireGuard IP, or any
-- address), or a tunnel origin: an http proxy registered on this node by a
-- client of an invite, under its proxy name.
CREATE TABLE origins (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  -- '' for a tunnel origin
  wireguard_ip TEXT NOT NULL DEFAULT '',
  wireguard_public_key TEXT NOT NULL DEFAULT '',
  -- a tunnel origin's invite and proxy name ('' for an address)
  invite_id TEXT NOT NULL DEFAULT '',
  proxy_name TEXT NOT NULL DEFAULT '',
  created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX origins_wireguard_ip ON origins (wireguard_ip) WHERE wireguard_ip <> '';

-- A hostname routed to an origin (seed 004's routes).
CREATE TABLE routes (
  id TEXT PRIMARY KEY,
  hostname TEXT NOT NULL UNIQUE,
  origin_id TEXT NOT NULL REFERENCES origins (id),
  -- the origin's port (0 for a tunnel origin)
  target_port BIGINT NOT NULL,
  -- plain HTTP for the hostname is redirected to HTTPS (0/1)
  redirect_https BIGINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL
);
CREATE INDEX routes_origin ON routes (origin_id);

-- Edge nodes with persistent tokens, stored as SHA-256 (seed 004).
CREATE TABLE edge_nodes (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  auth_token_hash TEXT NOT NULL UNIQUE,
  last_seen BIGINT,
  created_at BIGINT NOT NULL
);

-- A managed certificate per hostname, issued by ACME.
CREATE TABLE certificates (
  hostname TEXT PRIMARY KEY,
  -- pending | valid | failed
  status TEXT NOT NULL,
  -- PEM chain (leaf first) and PKCS#8 key ('' until issued)
  chain_pem TEXT NOT NULL DEFAULT '',
  key_pem TEXT NOT NULL DEFAULT '',
  not_before BIGINT NOT NULL DEFAULT 0,
  not_after BIGINT NOT NULL DEFAULT 0,
  -- when to renew (two thirds of the lifetime), or to try again
  renew_at BIGINT NOT NULL DEFAULT 0,
  attempts BIGINT NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT '',
  updated_at BIGINT NOT NULL
);
