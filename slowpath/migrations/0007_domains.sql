-- Domains (issue 16, seed 000 §8.2): a user's own domain is routed and
-- certified only once its ownership is verified, by an HTTP token or a
-- DNS TXT record; hostnames under a node's subDomainHost or the DNS
-- manager's zone are official and need none. Same portability rules as
-- 0001 (TEXT and BIGINT, unix ms).
CREATE TABLE domains (
  domain TEXT PRIMARY KEY,
  -- what the owner publishes: the HTTP body or the TXT value
  token TEXT NOT NULL,
  -- pending | verified
  status TEXT NOT NULL,
  -- how it was verified: http | dns ('' while pending)
  method TEXT NOT NULL DEFAULT '',
  verified_at BIGINT,
  -- the last attempt's failure, for the owner to read
  last_error TEXT NOT NULL DEFAULT '',
  created_at BIGINT NOT NULL
);

-- The records the DNS manager keeps in its zone by RFC 2136 updates: one
-- row per routed hostname under the zone, with the addresses last set.
CREATE TABLE dns_records (
  hostname TEXT PRIMARY KEY,
  -- comma-separated addresses as set ('' while never set)
  addresses TEXT NOT NULL DEFAULT '',
  -- present | failed | deleting
  status TEXT NOT NULL,
  last_error TEXT NOT NULL DEFAULT '',
  updated_at BIGINT NOT NULL
);
