-- The ledger's schema, version 1. Applied once, in one transaction, under the
-- migration lock (app/ledger/migrations.py); never edit an applied migration:
-- add 0002_*.sql instead.

-- One row per closure_id: the first closure delivered with that id.
CREATE TABLE closures (
    closure_id          text PRIMARY KEY,
    session_id          text NOT NULL,
    tenant_id           text NOT NULL,
    provider_id         text NOT NULL,
    model               text NOT NULL,
    reason              text NOT NULL CHECK (reason IN ('closed', 'ttl_expired')),
    created_at          timestamptz NOT NULL,
    activated_at        timestamptz,
    closed_at           timestamptz NOT NULL,
    ttl_secs            bigint NOT NULL CHECK (ttl_secs > 0),
    round_count         bigint NOT NULL CHECK (round_count >= 0),
    missing_rounds      bigint NOT NULL CHECK (missing_rounds BETWEEN 0 AND round_count),
    initial_token_count bigint NOT NULL CHECK (initial_token_count >= 0),
    delta_token_count   bigint NOT NULL CHECK (delta_token_count >= 0),
    -- Up to 2 * (2^63 - 1) = 2^64 - 2: past bigint, hence numeric.
    total_token_count   numeric(20, 0) NOT NULL
                        CHECK (total_token_count = initial_token_count::numeric + delta_token_count),
    -- The SessionRecord (SPEC §4) as delivered, metadata included.
    record              jsonb NOT NULL,
    -- SHA-256 of the closure's content (all of it but emitted_at): what a
    -- repeat is compared on (app/ledger/closure_row.py).
    content_sha256      bytea NOT NULL,
    emitted_at          timestamptz NOT NULL,
    first_seen_at       timestamptz NOT NULL DEFAULT now(),
    source_topic        text NOT NULL,
    source_partition    integer NOT NULL,
    source_offset       bigint NOT NULL,
    -- Repeats with identical content, counted and otherwise ignored.
    duplicates          bigint NOT NULL DEFAULT 0,
    last_duplicate_at   timestamptz
);

-- Usage of one tenant over a period; and of everyone over a period.
CREATE INDEX closures_tenant_closed_at ON closures (tenant_id, closed_at);
CREATE INDEX closures_closed_at ON closures (closed_at);

-- A repeated closure_id whose content differs from the stored row: never
-- overwrites it; one row per delivery, for a person to resolve.
CREATE TABLE closure_conflicts (
    id                      bigserial PRIMARY KEY,
    closure_id              text NOT NULL,
    content_sha256          bytea NOT NULL,
    stored_content_sha256   bytea NOT NULL,
    total_token_count       numeric(20, 0) NOT NULL,
    record                  jsonb NOT NULL,
    reason                  text NOT NULL,
    missing_rounds          bigint NOT NULL,
    emitted_at              timestamptz NOT NULL,
    source_topic            text NOT NULL,
    source_partition        integer NOT NULL,
    source_offset           bigint NOT NULL,
    seen_at                 timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_topic, source_partition, source_offset)
);
CREATE INDEX closure_conflicts_closure_id ON closure_conflicts (closure_id);

-- Records of the closures topic that are not a valid closure: kept with the
-- error and the original bytes, never dropped.
CREATE TABLE ledger_rejects (
    id                  bigserial PRIMARY KEY,
    source_topic        text NOT NULL,
    source_partition    integer NOT NULL,
    source_offset       bigint NOT NULL,
    error               text NOT NULL,
    key                 bytea,
    value               bytea,
    rejected_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_topic, source_partition, source_offset)
);

-- Where each ledger consumer group resumes: the next offset to read per
-- partition, written in the same transaction as the closures read before it.
-- NULL: nothing consumed yet (start at the beginning of the partition).
CREATE TABLE ledger_offsets (
    consumer_group  text NOT NULL,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    next_offset     bigint,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Usage per tenant, provider and model, per UTC day and per UTC month.
CREATE VIEW ledger_usage_daily AS
SELECT tenant_id,
       provider_id,
       model,
       (closed_at AT TIME ZONE 'UTC')::date AS day,
       count(*) AS closures,
       sum(initial_token_count) AS initial_token_count,
       sum(delta_token_count) AS delta_token_count,
       sum(total_token_count) AS total_token_count,
       sum(round_count) AS round_count,
       sum(missing_rounds) AS missing_rounds
FROM closures
GROUP BY tenant_id, provider_id, model, (closed_at AT TIME ZONE 'UTC')::date;

CREATE VIEW ledger_usage_monthly AS
SELECT tenant_id,
       provider_id,
       model,
       date_trunc('month', day)::date AS month,
       sum(closures)::bigint AS closures,
       sum(initial_token_count) AS initial_token_count,
       sum(delta_token_count) AS delta_token_count,
       sum(total_token_count) AS total_token_count,
       sum(round_count) AS round_count,
       sum(missing_rounds) AS missing_rounds
FROM ledger_usage_daily
GROUP BY tenant_id, provider_id, model, date_trunc('month', day)::date;

-- Usage of one tenant for the UTC days from_day .. to_day, both included,
-- grouped by: 'total' (one row), 'provider', 'model' (provider and model),
-- 'day' or 'month' (UTC). Columns a grouping does not use are NULL.
--   SELECT * FROM ledger_usage('acme', '2026-01-01', '2026-01-31', 'model');
CREATE FUNCTION ledger_usage(p_tenant text, p_from date, p_to date, p_by text DEFAULT 'total')
RETURNS TABLE (
    tenant_id text,
    provider_id text,
    model text,
    period_start date,
    closures bigint,
    initial_token_count numeric,
    delta_token_count numeric,
    total_token_count numeric,
    round_count numeric,
    missing_rounds numeric
)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_by IS NULL OR p_by NOT IN ('total', 'provider', 'model', 'day', 'month') THEN
        RAISE EXCEPTION 'ledger_usage: p_by must be total, provider, model, day or month, not %', p_by
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT c.tenant_id,
           CASE WHEN p_by IN ('provider', 'model') THEN c.provider_id END,
           CASE WHEN p_by = 'model' THEN c.model END,
           CASE p_by
               WHEN 'day' THEN (c.closed_at AT TIME ZONE 'UTC')::date
               WHEN 'month' THEN date_trunc('month', c.closed_at AT TIME ZONE 'UTC')::date
           END,
           count(*),
           sum(c.initial_token_count)::numeric,
           sum(c.delta_token_count)::numeric,
           sum(c.total_token_count),
           sum(c.round_count)::numeric,
           sum(c.missing_rounds)::numeric
    FROM closures AS c
    WHERE c.tenant_id = p_tenant
      AND c.closed_at >= (p_from::timestamp AT TIME ZONE 'UTC')
      AND c.closed_at < ((p_to + 1)::timestamp AT TIME ZONE 'UTC')
    GROUP BY 1, 2, 3, 4
    ORDER BY 2, 3, 4;
END
$$;
