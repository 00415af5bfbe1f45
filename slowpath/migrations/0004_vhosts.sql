-- Virtual hosts (issue 14): a node's frps vhost keys, as the control plane
-- hands them to its fastpath and shows them to invitees, and the one
-- subdomain an invite may be assigned. Same portability rules as 0001.

-- frps's subDomainHost for the node ('' = none).
ALTER TABLE nodes ADD COLUMN sub_domain_host TEXT NOT NULL DEFAULT '';
-- frps's vhostHTTPPort and vhostHTTPSPort (0 = not served).
ALTER TABLE nodes ADD COLUMN vhost_http_port BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN vhost_https_port BIGINT NOT NULL DEFAULT 0;

-- The label under the node's sub_domain_host reserved for this invite
-- ('' = none); stable for the invite's life.
ALTER TABLE invites ADD COLUMN subdomain TEXT NOT NULL DEFAULT '';

-- One invite per label on a node.
CREATE UNIQUE INDEX invites_subdomain ON invites (node_id, subdomain) WHERE subdomain <> '';
