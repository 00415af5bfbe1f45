-- Seed 002's traffic reports and tenant traffic quotas. Same portability
-- rules as 0001: TEXT and BIGINT only, times as unix ms (report timestamps
-- as the unix seconds they are sent with).

-- Bytes a tenant's proxy on a node relayed since its last report. A row
-- exists only while there is something unreported; it is deleted when a
-- report takes its bytes or the proxy closes.
CREATE TABLE traffic_report_pending (
    node_id TEXT NOT NULL,
    token TEXT NOT NULL,
    proxy TEXT NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (node_id, token, proxy)
);

-- Reports waiting to be POSTed, sent in `seq` order per node and deleted
-- once the report URL answers 2xx.
CREATE TABLE traffic_report_outbox (
    node_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    token TEXT NOT NULL,
    region TEXT NOT NULL,
    proxy TEXT NOT NULL,
    traffic_in BIGINT NOT NULL,
    traffic_out BIGINT NOT NULL,
    ts_s BIGINT NOT NULL,
    PRIMARY KEY (node_id, seq)
);

-- Bytes (both directions) a tenant used in one quota period, summed over
-- every node sharing the database.
CREATE TABLE quota_usage (
    token TEXT NOT NULL,
    period_start_ms BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (token, period_start_ms)
);
