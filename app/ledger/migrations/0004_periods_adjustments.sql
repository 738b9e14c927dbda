-- Billing: closures partitioned by the month they are billed in, closed
-- periods, append-only adjustments.

-- Closed (invoiced) months: nothing is booked into them any more. A closure
-- or adjustment for a closed month is booked into the first open one after it
-- (app/rules/periods.py). The ledger writes each batch under a SHARE lock on
-- this table and `accountant period close` takes an EXCLUSIVE one, so a month
-- closes between two batches, never during one.
CREATE TABLE ledger_periods (
    month       date PRIMARY KEY CHECK (month = date_trunc('month', month)::date),
    closed_at   timestamptz NOT NULL DEFAULT now(),
    closed_by   text NOT NULL
);

-- One row per closure_id ever written, whatever partition holds it (and even
-- once its partition is detached and archived): the closure_id's uniqueness,
-- and the digest repeats are judged on.
CREATE TABLE closure_ids (
    closure_id      text PRIMARY KEY,
    period          date NOT NULL,
    content_sha256  bytea NOT NULL
);

-- The closures, partitioned by `period`: the month each is billed in. An old
-- month is detached and archived with
--   ALTER TABLE closures DETACH PARTITION closures_y2026m01;
-- Partitions are made as months come (ledger_ensure_partition below).
ALTER TABLE closures RENAME TO closures_unpartitioned;
ALTER INDEX closures_pkey RENAME TO closures_unpartitioned_pkey;
DROP INDEX closures_tenant_closed_at, closures_closed_at;
DROP VIEW ledger_usage_monthly;
DROP VIEW ledger_usage_daily;
DROP FUNCTION ledger_usage(text, date, date, text);

-- The same columns, defaults and CHECKs, and where each closure is billed:
-- `period`, its closed_at month (UTC), or the first open month after it when
-- that one was closed (then `late`).
CREATE TABLE closures (
    LIKE closures_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    period  date NOT NULL,
    late    boolean NOT NULL,
    PRIMARY KEY (closure_id, period)
) PARTITION BY RANGE (period);
CREATE INDEX closures_tenant_closed_at ON closures (tenant_id, closed_at);

-- The partition of one month, made if missing. Returns its name.
CREATE FUNCTION ledger_ensure_partition(p_month date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    name text := 'closures_y' || to_char(p_month, 'YYYY') || 'm' || to_char(p_month, 'MM');
BEGIN
    IF p_month <> date_trunc('month', p_month)::date THEN
        RAISE EXCEPTION 'ledger_ensure_partition: % is not the first day of a month', p_month;
    END IF;
    -- Ledgers making the same month's partition together queue here; the later ones find it made.
    PERFORM pg_advisory_xact_lock(hashtext('ledger_ensure_partition'));
    IF to_regclass(name) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF closures FOR VALUES FROM (%L) TO (%L)',
                       name, p_month, (p_month + interval '1 month')::date);
    ELSIF NOT EXISTS (SELECT 1 FROM pg_inherits
                      WHERE inhrelid = to_regclass(name) AND inhparent = 'closures'::regclass) THEN
        -- A month detached while still open: the ledger waits (retrying) for a person.
        RAISE EXCEPTION '% exists but is no partition of closures (detached while its month was open?): '
                        'attach it again, or rename it', name
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN name;
END
$$;

SELECT ledger_ensure_partition(month)
FROM (SELECT DISTINCT date_trunc('month', closed_at AT TIME ZONE 'UTC')::date AS month
      FROM closures_unpartitioned) AS months;
INSERT INTO closures
SELECT c.*, date_trunc('month', c.closed_at AT TIME ZONE 'UTC')::date, false FROM closures_unpartitioned AS c;
INSERT INTO closure_ids (closure_id, period, content_sha256)
SELECT closure_id, period, content_sha256 FROM closures;
DROP TABLE closures_unpartitioned;

-- Corrections: never a change to a closure row, always a row here, booked in
-- a period like a closure (the closure's, or the first open one after it).
-- Append-only: a trigger refuses UPDATE and DELETE.
CREATE TABLE ledger_adjustments (
    id               bigserial PRIMARY KEY,
    closure_id       text NOT NULL REFERENCES closure_ids (closure_id),
    tenant_id        text NOT NULL,
    token_count      numeric(20, 0) NOT NULL CHECK (token_count <> 0),
    reason           text NOT NULL CHECK (reason <> ''),
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    period           date NOT NULL,
    late             boolean NOT NULL,
    -- The same key twice is one adjustment (a re-run of a command or a file).
    idempotency_key  text NOT NULL UNIQUE
);
CREATE INDEX ledger_adjustments_tenant_period ON ledger_adjustments (tenant_id, period);
CREATE INDEX ledger_adjustments_closure_id ON ledger_adjustments (closure_id);

CREATE FUNCTION ledger_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: add an adjustment instead', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER ledger_adjustments_append_only BEFORE UPDATE OR DELETE ON ledger_adjustments
FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_periods_append_only BEFORE UPDATE OR DELETE ON ledger_periods
FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Usage per tenant, provider and model, per UTC day (of closed_at) and per
-- billing period (closures only; adjustments: ledger_usage below).
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
       period AS month,
       count(*) AS closures,
       count(*) FILTER (WHERE late) AS late_closures,
       sum(initial_token_count) AS initial_token_count,
       sum(delta_token_count) AS delta_token_count,
       sum(total_token_count) AS total_token_count,
       sum(round_count) AS round_count,
       sum(missing_rounds) AS missing_rounds
FROM closures
GROUP BY tenant_id, provider_id, model, period;

-- Usage of one tenant, with its adjustments apart and together
-- (billed_token_count = total_token_count + adjustment_token_count).
-- Selected by UTC days of closed_at, p_from .. p_to both included, with the
-- adjustments of those closures; or, when p_period is given, by billing
-- period: the closures and adjustments booked in that month, p_from and
-- p_to ignored. p_as_of: only what the ledger held then (first_seen_at,
-- created_at), to reproduce an earlier report. Grouped by p_by: 'total',
-- 'provider', 'model' (provider and model), 'day' or 'month' (of closed_at).
--   SELECT * FROM ledger_usage('acme', NULL, NULL, 'model', p_period => '2026-11-01');
CREATE FUNCTION ledger_usage(p_tenant text, p_from date, p_to date, p_by text DEFAULT 'total',
                             p_period date DEFAULT NULL, p_as_of timestamptz DEFAULT NULL)
RETURNS TABLE (
    tenant_id text,
    provider_id text,
    model text,
    period_start date,
    closures bigint,
    late_closures bigint,
    initial_token_count numeric,
    delta_token_count numeric,
    total_token_count numeric,
    round_count numeric,
    missing_rounds numeric,
    adjustments bigint,
    adjustment_token_count numeric,
    billed_token_count numeric
)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_from timestamptz := p_from::timestamp AT TIME ZONE 'UTC';
    v_to timestamptz := (p_to + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF p_by IS NULL OR p_by NOT IN ('total', 'provider', 'model', 'day', 'month') THEN
        RAISE EXCEPTION 'ledger_usage: p_by must be total, provider, model, day or month, not %', p_by
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_period IS NULL AND (p_from IS NULL OR p_to IS NULL) THEN
        RAISE EXCEPTION 'ledger_usage: give p_from and p_to, or p_period'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    WITH selected AS (
        SELECT c.* FROM closures AS c
        WHERE c.tenant_id = p_tenant
          AND (p_as_of IS NULL OR c.first_seen_at <= p_as_of)
          AND CASE WHEN p_period IS NOT NULL THEN c.period = p_period
                   ELSE c.closed_at >= v_from AND c.closed_at < v_to END
    ),
    corrections AS (
        -- Each adjustment with the closure it corrects (whichever period holds that one).
        SELECT a.token_count, c.provider_id, c.model, c.closed_at
        FROM ledger_adjustments AS a
        JOIN closure_ids AS i ON i.closure_id = a.closure_id
        JOIN closures AS c ON c.closure_id = a.closure_id AND c.period = i.period
        WHERE a.tenant_id = p_tenant
          AND (p_as_of IS NULL OR a.created_at <= p_as_of)
          AND CASE WHEN p_period IS NOT NULL THEN a.period = p_period
                   ELSE c.closed_at >= v_from AND c.closed_at < v_to END
    ),
    items AS (
        SELECT s.provider_id, s.model, s.closed_at, 1 AS closures, s.late::int AS late_closures,
               s.initial_token_count::numeric AS initial_token_count,
               s.delta_token_count::numeric AS delta_token_count, s.total_token_count,
               s.round_count::numeric AS round_count, s.missing_rounds::numeric AS missing_rounds,
               0 AS adjustments, 0::numeric AS adjustment_token_count
        FROM selected AS s
        UNION ALL
        SELECT a.provider_id, a.model, a.closed_at, 0, 0, 0, 0, 0, 0, 0, 1, a.token_count
        FROM corrections AS a
    )
    SELECT p_tenant,
           CASE WHEN p_by IN ('provider', 'model') THEN t.provider_id END,
           CASE WHEN p_by = 'model' THEN t.model END,
           CASE p_by
               WHEN 'day' THEN (t.closed_at AT TIME ZONE 'UTC')::date
               WHEN 'month' THEN date_trunc('month', t.closed_at AT TIME ZONE 'UTC')::date
           END,
           sum(t.closures)::bigint,
           sum(t.late_closures)::bigint,
           sum(t.initial_token_count),
           sum(t.delta_token_count),
           sum(t.total_token_count),
           sum(t.round_count),
           sum(t.missing_rounds),
           sum(t.adjustments)::bigint,
           sum(t.adjustment_token_count),
           sum(t.total_token_count) + sum(t.adjustment_token_count)
    FROM items AS t
    GROUP BY 2, 3, 4
    ORDER BY 2, 3, 4;
END
$$;
