-- Which control plane holds each mesh node's control channel and each
-- relay's server channel (issue 17: several control planes on one
-- PostgreSQL). A control plane that starts clears only what it held
-- itself, not the online flags and node locations of channels another
-- live control plane holds; a channel that closes clears its node's flag
-- (or its relay's locations) only if no newer channel took its place.
-- Same portability rules as 0001 (TEXT and BIGINT, unix ms).
CREATE TABLE mesh_node_channels (
  node_id BIGINT PRIMARY KEY REFERENCES mesh_nodes (id) ON DELETE CASCADE,
  -- the holding control plane's own node id
  control_plane TEXT NOT NULL,
  -- unique per channel within that control plane's life
  channel TEXT NOT NULL,
  opened_ms BIGINT NOT NULL
);

CREATE TABLE mesh_server_channels (
  server_id BIGINT PRIMARY KEY REFERENCES mesh_servers (id) ON DELETE CASCADE,
  control_plane TEXT NOT NULL,
  channel TEXT NOT NULL,
  opened_ms BIGINT NOT NULL
);
