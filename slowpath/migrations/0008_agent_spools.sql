-- Node agents' event spools (issue 17): the last batch of events written
-- from each spool of each node, so that a batch sent again (its answer was
-- lost, or the agent moved to another control plane) is acknowledged and
-- not written twice. It is updated in the same transaction as the
-- batch's records. A spool made anew (its disk wiped) has a new id and
-- numbers from 1. Same portability rules as 0001 (TEXT and BIGINT, unix ms).
CREATE TABLE agent_spools (
  node_id TEXT NOT NULL,
  -- 32 hex digits, chosen by the agent when it made the spool
  spool_id TEXT NOT NULL,
  last_seq BIGINT NOT NULL,
  -- records the spool dropped for room (oldest first), as the agent said
  dropped BIGINT NOT NULL DEFAULT 0,
  events BIGINT NOT NULL DEFAULT 0,
  updated_ms BIGINT NOT NULL,
  PRIMARY KEY (node_id, spool_id)
);
